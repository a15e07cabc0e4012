"""PROTOCOL.md 10.4 against the agent: every file request's replies and events, field by field
(the Checker of test_protocol_doc.py), every documented field seen, and the file error codes."""

import os
import shutil
import tempfile

import files_client as fc
from test_protocol_doc import FILE_CODES, FILE_REPLIES, SCHEMAS, Checker, bad, rclient


def test_every_file_message_matches_its_schema(start_boxd):
    ck = Checker()
    d = start_boxd()
    c = rclient(d, ck)
    t = tempfile.mkdtemp(prefix="boxd-fdoc-", dir="/tmp")
    try:
        w = fc.upload(c, t + "/a/f.bin", os.urandom(700000), mkdir=True, mode=0o600,
                      mtime_ns=1700000000123456789)
        assert w["type"] == "file_written"
        fc.download(c, t + "/a/f.bin")
        fc.download(c, t + "/a/f.bin", offset=10, length=10)
        os.symlink("f.bin", t + "/a/link")
        assert "target" in fc.op(c, "file_stat", path=t + "/a/link")["entry"]
        fc.op(c, "file_list", path=t, depth=2)
        fc.op(c, "file_mkdir", path=t + "/b/c", parents=True)
        fc.op(c, "file_rename", **{"from": t + "/a/f.bin", "to": t + "/b/g"})
        fc.op(c, "file_chmod", path=t + "/b/g", mode=0o644, mtime_ns=1700000000000000000)
        fc.op(c, "file_symlink", path=t + "/b/l", target="../dangling", overwrite=True)
        ack = fc.upload_open(c, t + "/z", upload_id="doc-abort")
        assert c.request("file_abort", upload_id=ack["upload_id"])["type"] == "ok"
        wr = fc.op(c, "file_watch", path=t, recursive=True)
        with open(t + "/watched", "w") as f:
            f.write("w")
        for _ in range(20):
            m = c.recv(5)
            if m["type"] == "file_event":
                break
        # An overflow: many events while this client reads nothing.
        for i in range(30000):
            open(t + "/o%d" % (i % 300), "w").close()
        for _ in range(100000):
            m = c.recv(5)
            if m["type"] == "file_event" and m["event"] == "overflow":
                break
        assert c.request("file_unwatch", watch=wr["watch"])["type"] == "ok"
        fc.op(c, "file_remove", path=t + "/b", recursive=True)
        # A tree both ways (12.8): a file long enough for a continuation, a link, a FIFO.
        os.makedirs(t + "/tr/sub")
        with open(t + "/tr/sub/big", "wb") as f:
            f.write(os.urandom(1300000))
        os.symlink("sub/big", t + "/tr/link")
        os.mkfifo(t + "/tr/pipe")
        ents, end = fc.tree_read(c, t + "/tr")
        assert end["failed"] == 1 and [e["code"] for e in ents if "code" in e] == ["refused"]
        w = fc.tree_write(c, t + "/tw", fc.local_entries(t + "/tr"))
        assert w["failed"] == 1 and w["errors"][0]["name"] == "pipe", w
        assert w["files"] == 1 and w["symlinks"] == 1, w
        os.mkfifo(t + "/fifo")
        with open(t + "/x", "w") as f:
            f.write("x")
        errs = [
            c.request("file_list", path=t + "/x"),                       # not_a_directory
            c.request("file_read", path=t),                              # is_a_directory
            c.request("file_mkdir", path=t + "/a"),                      # exists
            c.request("file_read", path=t + "/fifo"),                    # refused
            c.request("file_stat", path=t + "/none"),                    # not_found
        ]
        ack = fc.upload_open(c, t + "/y2", sha256="0" * 64)
        errs.append(c.request("file_data", upload_id=ack["upload_id"], offset=0, data=b"x",
                              eof=True))                                 # checksum_mismatch
        errs.append(bad(c, "file_write", path="not/absolute"))           # bad_request
        errs.append(c.request("file_stat", path=t, user="root2"))        # denied / not_found
        big = fc.upload_open(c, t + "/w")
        errs.append(c.request("file_data", upload_id=big["upload_id"], offset=0,
                              data=b"\0" * (900 * 1024)))
        codes = {e.get("code") for e in errs}
        assert {"not_a_directory", "is_a_directory", "exists", "refused", "not_found",
                "checksum_mismatch", "bad_request"} <= codes, codes
    finally:
        shutil.rmtree(t, ignore_errors=True)
    d2 = start_boxd("--user", "nobody")
    c2 = rclient(d2, ck)
    r = c2.request("file_write", path="/root/boxd-doc-test")
    assert r["code"] == "permission_denied", r
    assert ck.seen_codes >= FILE_CODES - {"no_space", "unsupported", "io_error"}, ck.seen_codes
    assert FILE_REPLIES <= ck.seen_types, FILE_REPLIES - ck.seen_types
    assert not ck.problems, "\n".join(ck.problems)
    unseen = []
    for (kind, name), fields in SCHEMAS.items():
        if kind != "agent" or name not in FILE_REPLIES:
            continue
        got = ck.seen_fields.get((kind, name), set())
        unseen += ["%s.%s" % (name, f) for f in fields if f not in got]
    assert not unseen, "documented but never sent: %s" % unseen
