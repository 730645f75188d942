# cdef API of aal_core.tegrastats (see ext/tegrastats.pyx): the Python-level
# parse_tegrastats(line) is the interface; no cdef symbols are exported.
