/* Fixture for the call-circles check. */
int a_f(void);
int b_f(void)
{
    return a_f();
}
