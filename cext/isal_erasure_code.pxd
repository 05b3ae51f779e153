# Declarations from <isa-l/erasure_code.h>, ISA-L 2.30 (Debian bookworm libisal-dev 2.30.0).
# Only what cext/ec.pyx uses. The header names a parameter of gf_invert_matrix `in`, a Python
# keyword, hence `in_` here (parameter names do not reach the generated C).

cdef extern from "<isa-l/erasure_code.h>" nogil:
    void ec_init_tables(int k, int rows, unsigned char *a, unsigned char *gftbls)
    void ec_encode_data(int len, int k, int rows, unsigned char *gftbls,
                        unsigned char **data, unsigned char **coding)
    unsigned char gf_mul(unsigned char a, unsigned char b)
    void gf_gen_cauchy1_matrix(unsigned char *a, int m, int k)
    int gf_invert_matrix(unsigned char *in_, unsigned char *out, const int n)
