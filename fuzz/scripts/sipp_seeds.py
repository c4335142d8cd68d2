#!/usr/bin/env python3
"""Writes the SIP messages of the SIPp scenarios (tests/sipp/*.xml) as sip_message seeds.

Every <send> CDATA block becomes fuzz/corpus/sip_message/sipp_<scenario>_<n>.sip with its
[fields] replaced by plausible values, CRLF line ends and [len] set to the body's length; the
messages a scenario answers with ([last_Via:] and friends) get the headers of a plausible request.
Run from the repository root; re-run after changing a scenario.
"""
import pathlib
import re
import textwrap

FIELDS = {
    "local_ip": "192.0.2.10",
    "local_port": "5070",
    "remote_ip": "192.0.2.1",
    "remote_port": "5060",
    "transport": "UDP",
    "service": "100",
    "pid": "4242",
    "call_number": "1",
    "call_id": "1-4242@192.0.2.10",
    "branch": "z9hG4bK-4242-1-0",
    "branch-4": "z9hG4bK-4242-1-4",
    "branch-7": "z9hG4bK-4242-1-7",
    "routes": "",
    "next_url": "sip:ivr@192.0.2.1:5060",
    "peer_tag_param": ";tag=ivrd-1",
    "media_port": "6000",
    "media_ip": "192.0.2.10",
    "media_ip_type": "4",
    "local_ip_type": "4",
    "last_Via:": "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-ivrd-7;rport",
    "last_To:": "To: <sip:sipp@192.0.2.10:5070>;tag=4242SIPpTag01",
    "last_From:": "From: <sip:ivr@192.0.2.1>;tag=ivrd-1",
    "last_Call-ID:": "Call-ID: ivrd-out-1@192.0.2.1",
    "last_CSeq:": "CSeq: 1 BYE",
}


def substitute(text):
    def field(m):
        name = m.group(1)
        return FIELDS.get(name, m.group(0))

    return re.sub(r"\[([A-Za-z_][A-Za-z0-9_:-]*)\]", field, text)


def message(block):
    text = textwrap.dedent(block).strip("\n")
    lines = [line.rstrip() for line in text.split("\n")]
    if "" in lines:
        blank = lines.index("")
        head, body = lines[:blank], lines[blank + 1:]
    else:
        head, body = lines, []
    while body and body[-1] == "":
        body.pop()
    # An empty [routes] leaves an empty line; SIPp drops such lines from the head too.
    head = [substitute(line) for line in head]
    head = [line for line in head if line.strip()]
    body_text = "".join(substitute(line) + "\r\n" for line in body)
    head_text = "\r\n".join(head).replace("[len]", str(len(body_text.encode())))
    return (head_text + "\r\n\r\n" + body_text).encode()


def main():
    out = pathlib.Path("fuzz/corpus/sip_message")
    out.mkdir(parents=True, exist_ok=True)
    for xml in sorted(pathlib.Path("tests/sipp").glob("*.xml")):
        src = xml.read_text(encoding="latin-1")
        sends = re.findall(r"<send[^>]*>\s*<!\[CDATA\[(.*?)\]\]>", src, re.S)
        for i, block in enumerate(sends):
            (out / f"sipp_{xml.stem}_{i}.sip").write_bytes(message(block))


if __name__ == "__main__":
    main()
