"""Interfaces stage: what the host has (netlink.py), which of it is captured and why (selection.py,
egrep.py for the lists' regexes), interfaces coming and going (hotplug.py), and `ossensor interfaces`
(report.py). Nothing is imported here, so that a command pays only for the modules it uses."""
