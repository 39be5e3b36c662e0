"""``allow``/``deny`` -> the gateway's ``[ip]`` section.

nginx checks the rules in order and the first match decides; the gateway refuses an
address in ``deny`` and, when ``allow`` is not empty, any address outside it.  The usual
lists translate exactly (``allow A; allow B; deny all;`` and ``deny A; deny B;``).  When
an earlier ``allow`` overlaps a later ``deny`` nginx lets those addresses in and the
gateway does not: that is noted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from gateway.nginx.context import Recorder
from gateway.nginx.notes import APPROXIMATED, NOT_NEEDED, UNSUPPORTED
from gateway.nginx.parser import Directive

__all__ = ["EVERYONE", "ip_rules"]

EVERYONE = ["all"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_rules(rules: Sequence[Directive], recorder: Recorder) -> dict[str, Any]:
    """The ``[ip]`` section for nginx's ``rules`` (allow/deny in order); {} for none."""
    allows: list[tuple[int, str, Network]] = []
    denies: list[tuple[int, str, Network]] = []
    default_allow = True
    for index, rule in enumerate(rules):
        target = rule.args[0] if len(rule.args) == 1 else ""
        if target == "all":
            default_allow = rule.name == "allow"
            for dead in rules[index + 1 :]:
                recorder.note(dead, NOT_NEEDED, f"never reached after `{rule.text()}`")
            break
        if target == "unix:":
            recorder.note(rule, NOT_NEEDED, "the gateway does not listen on Unix sockets")
            continue
        try:
            network = ipaddress.ip_network(target, strict=False)
        except ValueError:
            recorder.note(rule, UNSUPPORTED, "not an address, a CIDR range or `all`")
            continue
        if str(network.network_address) != target.partition("/")[0]:
            target = str(network)  # nginx ignores host bits; the gateway refuses them
        (allows if rule.name == "allow" else denies).append((index, target, network))
    for deny_index, _, denied in denies:
        for allow_index, _, allowed in allows:
            if allow_index < deny_index and allowed.overlaps(denied):
                recorder.note(
                    rules[deny_index],
                    APPROXIMATED,
                    f"nginx lets {allowed} in first (earlier allow); the gateway's deny wins",
                )
    section: dict[str, Any] = {}
    if default_allow:
        # Allow rules only matter before a later deny here; the gateway allows by default.
        if denies:
            section["deny"] = [text for _, text, _ in denies]
    else:
        if allows:
            section["allow"] = [text for _, text, _ in allows]
            if denies:
                section["deny"] = [text for _, text, _ in denies]
        else:
            section["deny"] = list(EVERYONE)
    return section
