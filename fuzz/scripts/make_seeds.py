#!/usr/bin/env python3
"""Writes the generated seeds of fuzz/corpus/: RTP packets, SIP INFO bodies, digest challenges,
small WAV files and customer CSV variants, plus copies of the repository's own SIP, SDP,
dialplan and CSV files. Run from the repository root; the output is committed.
"""
import math
import pathlib
import shutil
import struct
import subprocess

ROOT = pathlib.Path("fuzz/corpus")


def put(target, name, data):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def copies():
    for src in sorted(pathlib.Path("tests/data/rfc4475").glob("*.sip")):
        shutil.copy(src, ROOT / "sip_message" / f"rfc4475_{src.name}")
    (ROOT / "sdp").mkdir(parents=True, exist_ok=True)
    for src in sorted(pathlib.Path("tests/data/sdp").glob("*.sdp")):
        shutil.copy(src, ROOT / "sdp" / src.name)
    (ROOT / "dialplan").mkdir(parents=True, exist_ok=True)
    for src in sorted(pathlib.Path("dialplans").glob("*.toml")):
        shutil.copy(src, ROOT / "dialplan" / src.name)
    (ROOT / "customers_csv").mkdir(parents=True, exist_ok=True)
    shutil.copy("examples/customers.csv", ROOT / "customers_csv" / "example.csv")


# ---------------------------------------------------------------- RTP

def rtp(pt, seq, ts, ssrc, payload, marker=False, csrcs=(), ext=None, pad=0):
    b0 = 0x80 | len(csrcs) | (0x10 if ext is not None else 0) | (0x20 if pad else 0)
    b1 = pt | (0x80 if marker else 0)
    out = struct.pack("!BBHII", b0, b1, seq, ts, ssrc)
    for c in csrcs:
        out += struct.pack("!I", c)
    if ext is not None:
        out += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    out += payload
    if pad:
        out += b"\0" * (pad - 1) + bytes([pad])
    return out


def event(code, end, volume, duration):
    return struct.pack("!BBH", code, (0x80 if end else 0) | volume, duration)


def ulaw(sample):
    # G.711 mu-law, as in src/media/g711.rs.
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    if sample < 0:
        sample = -sample
    sample = min(sample, clip) + bias
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def tone(low, high, n, start=0):
    return bytes(
        ulaw(int(8000 * (math.sin(2 * math.pi * low * (start + i) / 8000)
                         + math.sin(2 * math.pi * high * (start + i) / 8000))))
        for i in range(n)
    )


def sequence(packets):
    out = b""
    for p in packets:
        assert len(p) < 256
        out += bytes([len(p)]) + p
    return out


def rtp_seeds():
    ssrc = 0x1234ABCD
    put("rtp", "pcmu_silence.bin", rtp(0, 1, 160, ssrc, b"\xff" * 160, marker=True))
    put("rtp", "pcma_silence.bin", rtp(8, 2, 320, ssrc, b"\xd5" * 160))
    put("rtp", "event_5_start.bin", rtp(101, 3, 480, ssrc, event(5, False, 10, 160), marker=True))
    put("rtp", "event_hash_end.bin", rtp(101, 4, 480, ssrc, event(11, True, 10, 800)))
    put("rtp", "csrc_ext_padding.bin",
        rtp(101, 5, 640, ssrc, event(1, False, 10, 160), csrcs=(7,), ext=b"\x10\x01\x02\x03", pad=4))
    put("rtp", "rtcp_sr.bin", struct.pack("!BBHI", 0x80, 200, 6, ssrc) + b"\0" * 20)
    # A whole key press as a sender writes it: start, updates, three end packets; a second key.
    press = [rtp(101, 10, 8000, ssrc, event(1, False, 10, 160), marker=True),
             rtp(101, 11, 8000, ssrc, event(1, False, 10, 320)),
             rtp(101, 12, 8000, ssrc, event(1, False, 10, 480))]
    press += [rtp(101, 13 + i, 8000, ssrc, event(1, True, 10, 640)) for i in range(3)]
    press += [rtp(101, 16, 9600, ssrc, event(12, False, 10, 160), marker=True),
              rtp(101, 17, 9600, ssrc, event(12, True, 10, 480))]
    put("rtp", "seq_two_presses.bin", sequence(press))
    # A long press split into segments (RFC 4733 2.5.1.3), then a new SSRC.
    seg = [rtp(101, 20, 1000, ssrc, event(9, False, 10, 0xFFF0)),
           rtp(101, 21, 1000 + 0xFFFF, ssrc, event(9, False, 10, 160)),
           rtp(101, 22, 500, ssrc + 1, event(9, True, 10, 800))]
    put("rtp", "seq_segments_new_ssrc.bin", sequence(seg))
    # In-band '7' (852 Hz + 1209 Hz) in PCMU, 60 ms, then silence.
    audio = [rtp(0, 30 + i, 160 * i, ssrc, tone(852, 1209, 160, 160 * i)[:160]) for i in range(3)]
    audio += [rtp(0, 33, 480, ssrc, b"\xff" * 160)]
    put("rtp", "seq_inband_7.bin", sequence(audio))


# ---------------------------------------------------------------- SIP INFO, digest

def info_seeds():
    bodies = {
        "relay_5.txt": "Signal=5\r\nDuration=160\r\n",
        "relay_hash.txt": "Signal=#\r\nDuration=250\r\n",
        "relay_event_10.txt": "Signal=10\nDuration=160\n",
        "dtmf_star.bin": "application/dtmf\0*",
        "dtmf_7.bin": "application/dtmf\x007\r\n",
        "relay_params.bin": "Application/DTMF-Relay; charset=utf-8\0signal: 11\r\nduration: 100",
        "relay_quoted.bin": "application/dtmf-relay\0Duration=160\r\nSignal=\"d\"\r\n",
        "other_type.bin": "text/plain\0Signal=5",
    }
    for name, body in bodies.items():
        put("sip_info", name, body)


def digest_seeds():
    values = {
        "asterisk_md5.txt": 'Digest realm="asterisk",nonce="1712345678/3b8e0f5c1a2d4e6f",opaque="5c1f2b4a6d",algorithm=md5,qop="auth"',
        "sha256.txt": 'Digest realm="pbx.example.com", nonce="b6d5c3e0a1f2", opaque="x", algorithm=SHA-256, qop="auth,auth-int"',
        "no_qop.txt": 'Digest realm="sip.example.com", nonce="ea9c8e88df84f1cec4341ae6cbe5a359", opaque="", stale=FALSE, algorithm=MD5',
        "commas_in_quotes.txt": 'Digest realm="a,b", domain="sip:a.example.com, sip:b.example.com", nonce="n,1", qop="auth-int, auth"',
        "unquoted.txt": "digest realm=x,nonce=y,algorithm=MD5",
        "basic.txt": 'Basic realm="x"',
        "unknown_alg.txt": 'Digest realm="r", nonce="n", algorithm=SHA-512-256',
    }
    for name, value in values.items():
        put("digest", name, value)


# ---------------------------------------------------------------- WAV

def wav(fmt_tag, channels, rate, bits, frames, extensible=False):
    block = channels * bits // 8
    data = b""
    for i in range(frames):
        for c in range(channels):
            x = 0.5 * math.sin(2 * math.pi * (440 + 200 * c) * i / rate)
            if fmt_tag == 3:
                data += struct.pack("<f", x)
            elif bits == 8:
                data += bytes([int(128 + 127 * x)])
            elif bits == 16:
                data += struct.pack("<h", int(32767 * x))
            elif bits == 24:
                data += struct.pack("<i", int(8388607 * x))[:3]
            else:
                data += struct.pack("<i", int(2147483647 * x))
    if extensible:
        sub = struct.pack("<HHIIHH", 0xFFFE, channels, rate, rate * block, block, bits)
        sub += struct.pack("<HHI", 22, bits, 3 if channels == 2 else 4)
        sub += struct.pack("<IHH", fmt_tag, 0x0000, 0x0010) + bytes.fromhex("800000aa00389b71")
        fmt = sub
    else:
        fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"data" + struct.pack("<I", len(data)) + data
    out = b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks
    assert len(out) < 4096, (fmt_tag, channels, rate, bits, len(out))
    return out


def wav_seeds():
    put("wav", "u8_mono_8k.wav", wav(1, 1, 8000, 8, 400))
    put("wav", "s16_mono_8k.wav", wav(1, 1, 8000, 16, 400))
    put("wav", "s16_stereo_16k.wav", wav(1, 2, 16000, 16, 400))
    put("wav", "s16_mono_44k1.wav", wav(1, 1, 44100, 16, 1500))
    put("wav", "s24_mono_16k.wav", wav(1, 1, 16000, 24, 600))
    put("wav", "s32_mono_8k.wav", wav(1, 1, 8000, 32, 400))
    put("wav", "f32_mono_44k1.wav", wav(3, 1, 44100, 32, 900))
    put("wav", "f32_stereo_8k.wav", wav(3, 2, 8000, 32, 400))
    put("wav", "ext_s16_stereo_48k.wav", wav(1, 2, 48000, 16, 800, extensible=True))


# ---------------------------------------------------------------- customer CSV

def csv_seeds():
    files = {
        "crlf_bom.csv": "\ufeffID,Name,Mobile,Language\r\n123456,Erika Mustermann,0170 1234567,de\r\n234567,\"Doe, John\",+44 7911 123456,en_gb\r\n",
        "extra_fields.csv": "mobile,name,id,branch,tier\n+491701234567,Erika,1,Köln,gold\n+491711234568,Max,2,,\n",
        "bad_rows.csv": "id,name,mobile\n,No Id,0170 1234567\n2,,0170 1234567\n3,Bad Mobile,12\n4,Too,Many,Fields\n1,Dup,0170 1234567\n1,Dup,0170 1234567\n5,Tab\there,0170 1234567\n",
        "multiline.csv": "id,name,mobile,language\n1,\"Two\nLines\",0170 1234567,de\n2,B,+1 202 555 0143,xx-YYY\n3,\"Quote \"\"Q\"\"\",(0170) 123-4567,\n",
        "header_only.csv": "id,name,mobile\n",
        "bad_header.csv": "id,name,mobile,id\n1,A,0170 1234567,1\n",
        "lone_cr.csv": "id,name,mobile\r1,A,0170 1234567\r2,B,0170 7654321",
    }
    for name, text in files.items():
        put("customers_csv", name, text)
    put("customers_csv", "latin1_row.csv", b"id,name,mobile\n1,J\xfcrgen,0170 1234567\n2,B,0170 7654321\n")


if __name__ == "__main__":
    copies()
    rtp_seeds()
    info_seeds()
    digest_seeds()
    wav_seeds()
    csv_seeds()
