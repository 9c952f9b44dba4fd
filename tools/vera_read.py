#!/usr/bin/env python3
"""An independent .vera reader, written from FORMAT.md alone (not from the Rust code).

It exists to prove the spec is complete: scripts/test runs it over segments the Rust
writer produced and compares its findings with the Rust reader's.

usage: vera_read.py SEGMENT_OR_STORE_DIR...   prints one JSON line per segment

Local-store objects (`VERALOBJ` wrapper, see store/src/local.rs) are unwrapped first;
plain .vera files are read as they are.
"""
import json
import struct
import sys
from pathlib import Path

import blake3
import crc32c
import lz4.block
import zstandard

HEADER_LEN, FOOTER_LEN, ENTRY_LEN, TRAILER_LEN = 64, 160, 68, 32
RECORD_FIXED_LEN, RECORD_CRC_LEN = 52, 4
HASH_CONTEXT = "vera 2026-11-24 locate_shard uid hash v1"


def fingerprint(uid: str) -> int:
    digest = blake3.blake3(uid.encode("utf-8"), derive_key_context=HASH_CONTEXT).digest()
    return struct.unpack_from("<Q", digest, 8)[0]


class Corrupt(Exception):
    pass


def unwrap_local_object(data: bytes) -> bytes:
    if data[:8] == b"VERALOBJ":
        (header_len,) = struct.unpack_from("<I", data, 8)
        return data[12 + header_len:]
    return data


def leaf(h: bytes) -> bytes:
    return blake3.blake3(b"\x00" + h).digest()


def merkle_root(leaves):
    if not leaves:
        return blake3.blake3(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return blake3.blake3(b"\x01" + merkle_root(leaves[:k]) + merkle_root(leaves[k:])).digest()


def read_segment(obj: bytes) -> dict:
    if len(obj) < HEADER_LEN + FOOTER_LEN:
        raise Corrupt("too short")
    header = obj[:HEADER_LEN]
    if header[:8] != b"VERA\x00SEG" or crc32c.crc32c(header[:60]) != struct.unpack_from("<I", header, 60)[0]:
        raise Corrupt("bad header")
    version, header_len, epoch, granularity, n_bits, time_bucket, bucket, generation = struct.unpack_from(
        "<HHHBBiII", header, 8)
    footer = obj[-FOOTER_LEN:]
    if footer[152:160] != b"VERA\x00END" or crc32c.crc32c(footer[:148]) != struct.unpack_from("<I", footer, 148)[0]:
        raise Corrupt("bad footer")
    (region_offset, region_len, dict_len, index_codec, _reserved, fversion, index_raw_len, entry_count,
     data_len) = struct.unpack_from("<QQIBBHQQQ", footer, 0)
    index_checksum, data_checksum, root = footer[48:80], footer[80:112], footer[112:144]
    if version not in (1, 2) or fversion != version or header_len != 64:
        raise Corrupt("unknown version")
    if region_offset + region_len + FOOTER_LEN != len(obj) or data_len != region_offset - HEADER_LEN:
        raise Corrupt("lengths do not add up")
    region = obj[region_offset:region_offset + region_len]
    if blake3.blake3(region).digest() != index_checksum:
        raise Corrupt("index checksum")
    dictionary, stored_block = region[:dict_len], region[dict_len:]
    if index_codec == 1:
        block = zstandard.ZstdDecompressor().decompress(stored_block, max_output_size=index_raw_len)
    else:
        block = stored_block
    if len(block) != index_raw_len:
        raise Corrupt("index length")
    pos = 0
    (count,) = struct.unpack_from("<I", block, pos); pos += 4
    (type_count,) = struct.unpack_from("<H", block, pos); pos += 2
    types = []
    for _ in range(type_count):
        n = block[pos]; pos += 1
        types.append(block[pos:pos + n].decode("ascii")); pos += n
    (pool_len,) = struct.unpack_from("<I", block, pos); pos += 4
    pool = block[pos:pos + pool_len]; pos += pool_len
    if count != entry_count or len(block) - pos != count * ENTRY_LEN:
        raise Corrupt("entry table")
    zdict = zstandard.ZstdCompressionDict(dictionary) if dictionary else None
    files, leaves, stored_digests, expected_offset, previous = [], [], [], HEADER_LEN, None
    for i in range(count):
        (uid_off, uid_len, ctype, codec, flags, _res, created_at, data_offset, stored_len, raw_len) = struct.unpack_from(
            "<IHHBBHqQII", block, pos + i * ENTRY_LEN)
        content_hash = block[pos + i * ENTRY_LEN + 36: pos + (i + 1) * ENTRY_LEN]
        uid = pool[uid_off:uid_off + uid_len].decode("utf-8")
        key = (fingerprint(uid) if version == 2 else 0, uid.encode())
        if previous is not None and previous >= key:
            raise Corrupt("not sorted")
        if data_offset != expected_offset:
            raise Corrupt("not contiguous")
        if version == 1:
            record_len = stored_len + TRAILER_LEN
            record = obj[data_offset:data_offset + record_len]
            stored, trailer = record[:stored_len], record[stored_len:]
            if trailer != content_hash:
                raise Corrupt(f"trailer of {uid}")
        else:
            header_len = RECORD_FIXED_LEN + len(uid.encode()) + RECORD_CRC_LEN
            record_len = header_len + stored_len
            record = obj[data_offset:data_offset + record_len]
            if len(record) != record_len:
                raise Corrupt(f"record of {uid} truncated")
            if crc32c.crc32c(record[:header_len - RECORD_CRC_LEN]) != struct.unpack_from("<I", record, header_len - RECORD_CRC_LEN)[0]:
                raise Corrupt(f"record header crc of {uid}")
            fields = struct.unpack_from("<BBHqII", record, 0) + (record[20:52], record[52:header_len - RECORD_CRC_LEN])
            if fields != (codec, len(uid.encode()), ctype, created_at, stored_len, raw_len, content_hash, uid.encode()):
                raise Corrupt(f"record header of {uid} disagrees with the index")
            stored = record[header_len:]
        if codec == 0:
            content = stored
        elif codec == 1:
            content = zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_len)
        elif codec == 2:
            content = lz4.block.decompress(stored, uncompressed_size=raw_len)
        elif codec == 3:
            content = zstandard.ZstdDecompressor(dict_data=zdict).decompress(stored, max_output_size=raw_len)
        else:
            raise Corrupt("codec")
        if len(content) != raw_len or blake3.blake3(content).digest() != content_hash:
            raise Corrupt(f"content of {uid}")
        stored_digests.append(blake3.blake3(stored).digest())
        leaves.append(leaf(content_hash))
        files.append({"uid": uid, "content_type": types[ctype], "created_at": created_at, "raw_len": raw_len,
                      "blake3": content_hash.hex()})
        expected_offset = data_offset + record_len
        previous = key
    if expected_offset != region_offset:
        raise Corrupt("data does not end at the index")
    if blake3.blake3(b"".join(stored_digests)).digest() != data_checksum:
        raise Corrupt("data checksum")
    if merkle_root(leaves) != root:
        raise Corrupt("merkle root")
    return {"format_version": version, "epoch": epoch, "granularity": granularity, "n_bits": n_bits, "time_bucket": time_bucket,
            "bucket": bucket, "generation": generation, "files": len(files),
            "raw_bytes": sum(f["raw_len"] for f in files), "merkle_root": root.hex(),
            "uids_blake3": blake3.blake3("\n".join(f["uid"] + " " + f["blake3"] for f in files).encode()).hexdigest()}


def main(argv):
    paths = []
    for arg in argv:
        p = Path(arg)
        paths.extend(sorted(p.rglob("*.vera")) if p.is_dir() else [p])
    failures = 0
    for path in paths:
        try:
            summary = read_segment(unwrap_local_object(path.read_bytes()))
            summary["path"] = str(path)
            print(json.dumps(summary, sort_keys=True))
        except (Corrupt, struct.error, UnicodeDecodeError, zstandard.ZstdError, lz4.block.LZ4BlockError) as error:
            failures += 1
            print(json.dumps({"path": str(path), "error": str(error)}))
    return 1 if failures or not paths else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
