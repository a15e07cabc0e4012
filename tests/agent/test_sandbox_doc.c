/* agent/sandbox.h lists each seccomp profile's rules: that list must be the one the filters are
 * made from. The block between <rules> and </rules> in the header is compared with
 * sandbox_describe's output, which is printed, ready to paste, when they differ.
 *   test_sandbox_doc PATH/agent/sandbox.h          check
 *   test_sandbox_doc --print                      print the block */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sandbox.h"

int main(int argc, char **argv)
{
    static char want[16384];
    int n = sandbox_describe(want, sizeof want);
    if (n < 0) {
        fprintf(stderr, "sandbox_describe: %d\n", n);
        return 1;
    }
    if (argc == 2 && strcmp(argv[1], "--print") == 0) {
        fputs(want, stdout);
        return 0;
    }
    if (argc != 2) {
        fprintf(stderr, "usage: %s PATH/agent/sandbox.h | --print\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "re");
    if (f == NULL) {
        perror(argv[1]);
        return 1;
    }
    static char text[65536];
    size_t len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[len] = '\0';
    const char *a = strstr(text, " * <rules>\n");
    const char *b = a ? strstr(a, " * </rules>\n") : NULL;
    if (a == NULL || b == NULL) {
        fprintf(stderr, "%s: no <rules> block; it should read:\n%s", argv[1], want);
        return 1;
    }
    b += strlen(" * </rules>\n");
    if ((size_t)(b - a) != (size_t)n || memcmp(a, want, (size_t)n) != 0) {
        fprintf(stderr, "%s: the <rules> block is not what sandbox.c's tables make; it should "
                        "read:\n%s", argv[1], want);
        return 1;
    }
    printf("sandbox.h lists the rules the filters are made from (%d bytes)\n", n);
    return 0;
}
