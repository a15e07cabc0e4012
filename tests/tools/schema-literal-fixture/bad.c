/* A fixture for schema-literals.py: an encoder that writes a field name as a literal. The check
 * must fail on it (ctest schema.literals_fixture_fails). Never compiled. */
static void put(struct msg_out *o, int code)
{
    msg_kv_i64(o, "exit_code", code);
}
