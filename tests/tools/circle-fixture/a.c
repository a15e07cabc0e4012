/* Fixture for the call-circles check: a.c and b.c call each other. */
int b_f(void);
int a_f(void)
{
    return b_f();
}
