#!/usr/bin/python3
"""schema-literals.py DIR...

Holds the "one schema" rule (README "Where each concern lives", protocol/schema): the C files of
each DIR (agent/, protocol/client, protocol/boxctl) name protocol fields and message types
through protocol/schema (BOX_KEY(EXIT_CODE), BOX_REQ_KEY(TOKEN), BOX_TYPE(END), box_err_str),
never as string literals. A call of a function that takes a field name or a message type
(msgpack map keys: msg_kv_*, msg_key, msg_get*; boxctl's and the client's readers: get_bytes,
copy_str, key_is, lang_field, box_msg_is) whose name argument is a string literal is printed as
"FILE:LINE: literal name "x" (use protocol/schema)". Exit 1 if there is any, else 0.

Error codes and the agent's own message types cannot be literals at all: ev_begin, ev_error,
send_error_close and error_is take enum box_type or enum box_err, so the compiler refuses them.
"""
import os
import re
import sys

# The functions whose second argument is a field name or a message type.
CALL = re.compile(
    r"\b(msg_kv_\w+|msg_key|msg_get\w*|get_bytes|copy_str|key_is|lang_field|box_msg_is)\s*\("
    r"\s*[^,;\"()]*(?:\([^()]*\)[^,;\"()]*)*,\s*\"([^\"]*)\""
)


def strip_comments(s):
    # Blank comments but keep line breaks (for line numbers) and string literals.
    def blank(m):
        t = m.group(0)
        return t if t.startswith('"') else re.sub(r"[^\n]", " ", t)

    return re.sub(r'"(\\.|[^"\\\n])*"|/\*.*?\*/|//[^\n]*', blank, s, flags=re.S)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    bad = 0
    for d in argv[1:]:
        for name in sorted(os.listdir(d)):
            if not name.endswith(".c"):
                continue
            path = os.path.join(d, name)
            with open(path, encoding="utf-8") as f:
                text = strip_comments(f.read())
            for m in CALL.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                print('%s:%d: literal name "%s" in %s (use protocol/schema)'
                      % (path, line, m.group(2), m.group(1)))
                bad += 1
    print("schema-literals: %d literal name(s) in %s" % (bad, " ".join(argv[1:])))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
