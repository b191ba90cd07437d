/*
 * ossensor._filereader: capture files -> pcapng EPBs in batch buffers (`ossensor replay`), as the
 * Python type Reader. The reading itself is native/capfile.c (plain C); this file holds the Python side:
 * the batch buffer (a bytes object handed to Python by take(), shrunk in place, or written straight to
 * a file descriptor by write_to()), the GIL released while the file is read, and the errors as exceptions.
 * Python never sees a packet.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "capfile.h"

typedef struct {
    PyObject_HEAD
    struct capfile cf;
    PyObject *buf;  /* bytes being filled with EPBs: cf.out points into it */
    size_t buf_cap;
    int busy;       /* a read() or write_to() is in progress (GIL released) */
} Reader;

static PyObject *FileFormatError; /* ValueError subclass: offset, reason, kind attributes */

static PyObject *new_buffer(Reader *r)
{
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)r->buf_cap);
    if (!b)
        return NULL;
    r->buf = b;
    r->cf.out = (uint8_t *)PyBytes_AS_STRING(b);
    r->cf.out_cap = r->buf_cap;
    cf_batch_reset(&r->cf);
    return b;
}

static PyObject *Reader_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    Reader *r = (Reader *)type->tp_alloc(type, 0);
    if (r)
        r->cf.fd = -1;
    return (PyObject *)r;
}

static void Reader_dealloc(Reader *r)
{
    cf_free(&r->cf);
    Py_XDECREF(r->buf);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int Reader_init(Reader *r, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path", "filter", "snaplen", "batch_bytes", "name", "id_base", NULL};
    PyObject *path_obj;
    const char *expr = "", *name = "file0";
    unsigned snaplen = 262144;
    unsigned long long batch_bytes = 4ull << 20;
    unsigned id_base = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|sIKsI", kwlist, PyUnicode_FSConverter, &path_obj, &expr,
                                     &snaplen, &batch_bytes, &name, &id_base))
        return -1;
    if (r->cf.in || r->buf) {
        Py_DECREF(path_obj);
        PyErr_SetString(PyExc_RuntimeError, "Reader already initialised");
        return -1;
    }
    if (snaplen < 1 || snaplen > 262144) {
        Py_DECREF(path_obj);
        PyErr_SetString(PyExc_ValueError, "snaplen must be 1-262144");
        return -1;
    }
    r->buf_cap = batch_bytes < snaplen + 1024u ? snaplen + 1024u : (size_t)batch_bytes;
    r->buf_cap = (r->buf_cap + 3) & ~(size_t)3;
    int rc, err;
    Py_BEGIN_ALLOW_THREADS
    rc = cf_open(&r->cf, PyBytes_AS_STRING(path_obj), expr, snaplen, id_base, name);
    err = errno;
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        errno = err;
        if (err == ENOMEM)
            PyErr_NoMemory();
        else
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
        Py_DECREF(path_obj);
        cf_free(&r->cf);
        return -1;
    }
    Py_DECREF(path_obj);
    if (!new_buffer(r))
        return -1;
    return 0;
}

/* A Reader can be used: initialised and not being read by another thread. */
static int check_ready(Reader *r)
{
    if (!r->buf) {
        PyErr_SetString(PyExc_ValueError, "Reader is not initialised");
        return -1;
    }
    if (r->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Reader is being read by another thread");
        return -1;
    }
    return 0;
}

/* read(until_ns=-1) -> packets appended to the batch. Stops when the batch is full, the file
 * ends, an error occurs (state 'error', `error` = (offset, reason, kind); the packets before it
 * are in the batch; the next read() raises FileFormatError), or (pacing) the next packet is
 * later than until_ns. */
static PyObject *Reader_read(Reader *r, PyObject *args)
{
    unsigned long long until = ~0ull;
    long long until_in = -1;
    if (!PyArg_ParseTuple(args, "|L", &until_in))
        return NULL;
    if (until_in >= 0)
        until = (unsigned long long)until_in;
    if (check_ready(r) < 0)
        return NULL;
    if (r->cf.state == ST_ERROR) {
        /* The read that met the damage returned what came before it; asking again raises. */
        PyObject *exc = PyObject_CallFunction(FileFormatError, "s", "");
        if (!exc)
            return NULL;
        PyObject *msg = PyUnicode_FromFormat("at byte %llu: %s", (unsigned long long)r->cf.err_offset, r->cf.err_reason);
        PyObject *off = PyLong_FromUnsignedLongLong(r->cf.err_offset);
        PyObject *rsn = PyUnicode_FromString(r->cf.err_reason);
        PyObject *knd = PyUnicode_FromString(r->cf.err_kind);
        PyObject *args = msg ? PyTuple_Pack(1, msg) : NULL;
        if (args && off && rsn && knd && PyObject_SetAttrString(exc, "args", args) == 0 &&
            PyObject_SetAttrString(exc, "offset", off) == 0 && PyObject_SetAttrString(exc, "reason", rsn) == 0 &&
            PyObject_SetAttrString(exc, "kind", knd) == 0)
            PyErr_SetObject(FileFormatError, exc);
        Py_XDECREF(args);
        Py_XDECREF(msg);
        Py_XDECREF(off);
        Py_XDECREF(rsn);
        Py_XDECREF(knd);
        Py_DECREF(exc);
        return NULL;
    }
    if (r->cf.state == ST_EOF || (r->cf.state == ST_FULL && r->cf.batch_packets))
        return PyLong_FromLong(0);
    uint64_t before = r->cf.batch_packets;
    r->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    cf_read(&r->cf, until);
    Py_END_ALLOW_THREADS
    r->busy = 0;
    if (r->cf.state == ST_EOF || r->cf.state == ST_ERROR) /* nothing more to read: free the input buffer */
        cf_release(&r->cf);
    return PyLong_FromUnsignedLongLong(r->cf.batch_packets - before);
}

static PyObject *batch_counts(Reader *r);

static PyObject *Reader_take(Reader *r, PyObject *Py_UNUSED(ignored))
{
    if (check_ready(r) < 0)
        return NULL;
    PyObject *per_if = batch_counts(r);
    if (!per_if)
        return NULL;
    PyObject *data = r->buf;
    r->buf = NULL;
    if (_PyBytes_Resize(&data, (Py_ssize_t)r->cf.out_len) < 0) {
        Py_DECREF(per_if);
        new_buffer(r);
        return NULL;
    }
    unsigned long long pk = r->cf.batch_packets, f = r->cf.first_ns, l = r->cf.last_ns;
    if (!new_buffer(r)) { /* resets the batch (cf_batch_reset) */
        Py_DECREF(per_if);
        Py_DECREF(data);
        return NULL;
    }
    return Py_BuildValue("(NKKKN)", data, pk, f, l, per_if);
}

/* Per-interface (packets, bytes) of the batch being filled, and a reset for the next batch. */
static PyObject *batch_counts(Reader *r)
{
    PyObject *per_if = PyList_New(r->cf.n_ifs);
    if (!per_if)
        return NULL;
    for (unsigned i = 0; i < r->cf.n_ifs; i++) {
        PyObject *t = Py_BuildValue("(KK)", (unsigned long long)r->cf.ifs[i].packets,
                                    (unsigned long long)r->cf.ifs[i].bytes);
        if (!t) {
            Py_DECREF(per_if);
            return NULL;
        }
        PyList_SET_ITEM(per_if, i, t);
    }
    return per_if;
}

/* write_to(fd) -> (bytes_written, packets, first_ns, last_ns, per_if): like take(), but the EPBs go
 * straight from the batch buffer to a file descriptor and the buffer is reused (no new memory to
 * fault in, no copy through Python): the --out path. */
static PyObject *Reader_write_to(Reader *r, PyObject *arg)
{
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0)
        return NULL;
    if (check_ready(r) < 0)
        return NULL;
    PyObject *per_if = batch_counts(r);
    if (!per_if)
        return NULL;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(r->buf);
    size_t left = r->cf.out_len;
    int err = 0;
    r->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    while (left) {
        ssize_t n = write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            break;
        }
        p += n;
        left -= (size_t)n;
    }
    Py_END_ALLOW_THREADS
    r->busy = 0;
    if (err) {
        Py_DECREF(per_if);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *res = Py_BuildValue("(nKKKN)", (Py_ssize_t)r->cf.out_len, (unsigned long long)r->cf.batch_packets,
                                  (unsigned long long)r->cf.first_ns, (unsigned long long)r->cf.last_ns, per_if);
    if (!res)
        return NULL;
    cf_batch_reset(&r->cf);
    return res;
}

static PyObject *Reader_get_interfaces(Reader *r, void *Py_UNUSED(c))
{
    PyObject *out = PyList_New(r->cf.n_ifs);
    if (!out)
        return NULL;
    for (unsigned i = 0; i < r->cf.n_ifs; i++) {
        PyObject *t = Py_BuildValue("(NI)", PyUnicode_DecodeUTF8(r->cf.ifs[i].name, strlen(r->cf.ifs[i].name), "replace"),
                                    (unsigned)r->cf.ifs[i].linktype);
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

static PyObject *Reader_get_snaplens(Reader *r, void *Py_UNUSED(c))
{
    PyObject *out = PyList_New(r->cf.n_ifs);
    if (!out)
        return NULL;
    for (unsigned i = 0; i < r->cf.n_ifs; i++) {
        PyObject *v = PyLong_FromUnsignedLong(r->cf.ifs[i].snaplen);
        if (!v) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyObject *Reader_get_state(Reader *r, void *Py_UNUSED(c))
{
    static const char *names[] = {"more", "full", "wait", "eof", "error"};
    return PyUnicode_FromString(names[r->cf.state]);
}

static PyObject *Reader_get_error(Reader *r, void *Py_UNUSED(c))
{
    if (r->cf.state != ST_ERROR)
        Py_RETURN_NONE;
    return Py_BuildValue("(Kss)", (unsigned long long)r->cf.err_offset, r->cf.err_reason, r->cf.err_kind);
}

static PyObject *Reader_get_format(Reader *r, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(r->cf.fmt == FMT_PCAP ? "pcap" : r->cf.fmt == FMT_PCAPNG ? "pcapng" : "unknown");
}

#define U64_GETTER(field)                                                                                     \
    static PyObject *Reader_get_##field(Reader *r, void *Py_UNUSED(c))                                        \
    {                                                                                                         \
        return PyLong_FromUnsignedLongLong(r->cf.field);                                                         \
    }
U64_GETTER(packets_read)
U64_GETTER(bytes_read)
U64_GETTER(packets_passed)
U64_GETTER(bytes_passed)
U64_GETTER(truncated_by_snaplen)
U64_GETTER(cut_to_file_snaplen)
U64_GETTER(batch_packets)
U64_GETTER(next_ts)

static PyObject *Reader_get_offset(Reader *r, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(cf_offset(&r->cf));
}
static PyObject *Reader_get_batch_bytes(Reader *r, void *Py_UNUSED(c))
{
    return PyLong_FromSize_t(r->cf.out_len);
}

static PyGetSetDef Reader_getset[] = {
    {"interfaces", (getter)Reader_get_interfaces, NULL, "[(name, linktype)] by global interface id", NULL},
    {"snaplens", (getter)Reader_get_snaplens, NULL,
     "[snapshot length] by global interface id: libpcap's for the interface, records were cut to it", NULL},
    {"state", (getter)Reader_get_state, NULL, "'more' | 'full' | 'wait' | 'eof' | 'error'", NULL},
    {"error", (getter)Reader_get_error, NULL, "None, or (byte offset, reason, kind) once state is 'error'", NULL},
    {"format", (getter)Reader_get_format, NULL, "'pcap' | 'pcapng' | 'unknown' (before the first read)", NULL},
    {"packets_read", (getter)Reader_get_packets_read, NULL, "packet records read from the file", NULL},
    {"bytes_read", (getter)Reader_get_bytes_read, NULL, "captured bytes of the packets read", NULL},
    {"packets_passed", (getter)Reader_get_packets_passed, NULL, "packets that passed the filter", NULL},
    {"bytes_passed", (getter)Reader_get_bytes_passed, NULL, "bytes written of the packets that passed", NULL},
    {"truncated_by_snaplen", (getter)Reader_get_truncated_by_snaplen, NULL, "packets cut to snaplen", NULL},
    {"cut_to_file_snaplen", (getter)Reader_get_cut_to_file_snaplen, NULL,
     "pcap records longer than the file's snapshot length, cut to it before the filter (as libpcap)", NULL},
    {"batch_packets", (getter)Reader_get_batch_packets, NULL, "packets in the batch being filled", NULL},
    {"batch_bytes", (getter)Reader_get_batch_bytes, NULL, "bytes in the batch being filled", NULL},
    {"next_ts", (getter)Reader_get_next_ts, NULL, "state 'wait': time (ns) of the next packet", NULL},
    {"offset", (getter)Reader_get_offset, NULL, "file offset of the next record", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Reader_methods[] = {
    {"read", (PyCFunction)Reader_read, METH_VARARGS, "read(until_ns=-1) -> packets appended to the batch"},
    {"take", (PyCFunction)Reader_take, METH_NOARGS, "take() -> (epbs, packets, first_ns, last_ns, per_if)"},
    {"write_to", (PyCFunction)Reader_write_to, METH_O,
     "write_to(fd) -> (bytes, packets, first_ns, last_ns, per_if): the batch's EPBs written to fd, buffer reused"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ossensor._filereader.Reader",
    .tp_doc = "Reader(path, filter='', snaplen=262144, batch_bytes=4 MiB, name='file0', id_base=0): pcap/pcapng file "
              "-> pcapng EPBs in batch buffers, filtered by BPF",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Reader_new,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
};

static struct PyModuleDef filereader_module = {
    PyModuleDef_HEAD_INIT, "ossensor._filereader", "pcap/pcapng file reader for ossensor replay", -1, NULL, NULL,
    NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__filereader(void)
{
    if (PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&filereader_module);
    if (!m)
        return NULL;
    FileFormatError = PyErr_NewExceptionWithDoc(
        "ossensor._filereader.FileFormatError",
        "A damaged or unsupported capture file: attributes offset (byte), reason, kind ('format', 'filter', "
        "'io', 'memory').",
        PyExc_ValueError, NULL);
    if (!FileFormatError || PyModule_AddObjectRef(m, "FileFormatError", FileFormatError) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
