/* tests/test_dedup_unit.py compiles this against native/dedup.c (with ASan and UBSan) and runs it:
 * the identity's masking and the table's rules, one line per failure, exit 1 on any. */
#include "dedup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fails;
#define CHECK(cond, ...)                                                                                      \
    do {                                                                                                      \
        if (!(cond)) {                                                                                        \
            fails++;                                                                                          \
            printf("FAIL %s:%d ", __FILE__, __LINE__);                                                        \
            printf(__VA_ARGS__);                                                                              \
            printf("\n");                                                                                     \
        }                                                                                                     \
    } while (0)

static void frame(uint8_t *f, unsigned len, int v6)
{
    for (unsigned i = 0; i < len; i++)
        f[i] = (uint8_t)(i * 7 + 3);
    f[12] = v6 ? 0x86 : 0x08;
    f[13] = v6 ? 0xdd : 0x00;
    f[14] = v6 ? 0x60 : 0x45;
}

/* what forwarding does to a copy: new MACs, TTL / hop limit one less, IPv4 header checksum redone */
static void route(uint8_t *f, int v6)
{
    for (int i = 0; i < 12; i++)
        f[i] ^= 0x5a;
    if (v6) {
        f[14 + 7]--;
    } else {
        f[14 + 8]--;
        f[14 + 10] ^= 0x12;
        f[14 + 11] ^= 0x34;
    }
}

/* The constants of an unkeyed wyhash (what dd_hash used before it was keyed): planted in a payload at
 * one 48-byte round, they zeroed all three lanes, so everything before them (the addresses) was
 * forgotten and two packets to different hosts with one payload had one identity. */
static void plant(uint8_t *ip, unsigned at)
{
    const uint64_t k[3] = {0xe7037ed1a0b428dbull, 0x8ebc6af09c88c6e3ull, 0xa0761d6478bd642full};
    for (int i = 0; i < 3; i++)
        memcpy(ip + at + 16 * i, &k[i], 8);
}

int main(void)
{
    static uint8_t a[1600], b[1600];
    struct dd_table *T = dd_new(20), *U = dd_new(20);
    if (!T || !U) {
        printf("FAIL dd_new\n");
        return 1;
    }
    unsigned lens[] = {34, 40, 45, 47, 48, 49, 60, 64, 65, 95, 96, 97, 200, 1500};
    for (int v6 = 0; v6 < 2; v6++) {
        for (unsigned k = 0; k < sizeof lens / sizeof *lens; k++) {
            unsigned n = lens[k];
            if (v6 && n < 54)
                continue;
            frame(a, n, v6);
            memcpy(b, a, n);
            route(b, v6);
            uint64_t ka = dd_identity(T, a, n, n, 1), kb = dd_identity(T, b, n, n, 1);
            CHECK(ka == kb, "v6=%d len=%u: a routed copy has another identity", v6, n);
            /* the same IP packet on a raw-IP interface (a tun): the same identity */
            CHECK(dd_identity(T, a + 14, n - 14, n - 14, 101) == ka, "v6=%d len=%u: raw IP differs", v6, n);
            /* any other byte of the IP packet changed: another identity */
            for (unsigned i = 14; i < n; i++) {
                unsigned ip = i - 14;
                if ((!v6 && (ip == 8 || ip == 10 || ip == 11)) || (v6 && ip == 7) || ip == 0)
                    continue;
                memcpy(b, a, n);
                b[i] ^= 0x01;
                CHECK(dd_identity(T, b, n, n, 1) != ka, "v6=%d len=%u: byte %u changed, same identity", v6, n, i);
            }
            CHECK(dd_identity(T, a, n - 1, n - 1, 1) != dd_identity(T, a, n, n, 1), "len=%u vs %u", n - 1, n);
        }
    }
    /* without IP (ARP): compared whole, MACs included */
    frame(a, 42, 0);
    a[12] = 0x08, a[13] = 0x06;
    memcpy(b, a, 42);
    CHECK(dd_identity(T, b, 42, 42, 1) == dd_identity(T, a, 42, 42, 1), "ARP: equal frames differ");
    b[0] ^= 1;
    CHECK(dd_identity(T, b, 42, 42, 1) != dd_identity(T, a, 42, 42, 1), "ARP: another MAC, same identity");

    /* keyed: another table (another sensor, another start) has other keys */
    frame(a, 64, 0);
    CHECK(dd_identity(T, a, 64, 64, 1) != dd_identity(U, a, 64, 64, 1), "two tables, one identity");
    /* the public constants planted in a payload erase nothing */
    frame(a, 300, 0);
    plant(a + 14, 64);
    memcpy(b, a, 300);
    b[14 + 12] ^= 0x01; /* another source address */
    CHECK(dd_identity(T, a, 300, 300, 1) != dd_identity(T, b, 300, 300, 1), "planted constants: one identity");

    /* the table */
    struct dd_table *t = dd_new(20);
    CHECK(t != NULL, "dd_new");
    uint64_t ms = 1000000ull, t0 = 1700000000ull * 1000000000ull;
    CHECK(!dd_check(t, 42, t0, 3), "first copy is new");
    CHECK(dd_check(t, 42, t0 + 5000, 4), "copy on another interface within the window");
    CHECK(dd_check(t, 42, t0 + 6000, 5), "a third interface");
    CHECK(!dd_check(t, 42, t0 + 3 * ms, 3), "the same interface again: a new packet");
    CHECK(dd_check(t, 42, t0 + 3 * ms + 5000, 4), "its copy");
    CHECK(!dd_check(t, 42, t0 + 40 * ms, 4), "outside the window: new");
    CHECK(dd_check(t, 42, t0 + 40 * ms - 2 * ms, 3), "read out of order (another reader), inside the window");
    CHECK(!dd_check(t, 43, t0 + 40 * ms, 3), "another identity");
    /* overrun: many packets between a packet and its copy: the copy is kept, nothing distinct is lost */
    unsigned distinct_dups = 0;
    for (uint64_t k = 0; k < 100000; k++)
        distinct_dups += dd_check(t, 0x9e3779b97f4a7c15ull * (k + 1000), t0 + 41 * ms + k, (int)(k & 7));
    CHECK(distinct_dups == 0, "%u distinct packets suppressed", distinct_dups);
    struct dd_table *s = dd_share(t);
    CHECK(s == t && t->shared && t->refs == 2, "share");
    /* shared: the same rules, each set under its lock */
    CHECK(!dd_check(t, 44, t0 + 50 * ms, 3) && dd_check(t, 44, t0 + 50 * ms + 1000, 4), "shared: a copy");
    CHECK(!dd_check(t, 44, t0 + 51 * ms, 3), "shared: the same interface again");
    dd_release(t);
    dd_release(s);
    dd_release(T);
    dd_release(U);
    printf("%s (%d failures)\n", fails ? "FAILED" : "OK", fails);
    return fails ? 1 : 0;
}
