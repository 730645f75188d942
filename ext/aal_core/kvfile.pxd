# cdef API of aal_core.kvfile (see ext/kvfile.pyx).

# The wanted keys of a "key value" file as C data.  A line is tried against
# the candidates chained from first[its first byte] (an index into cands,
# -1 for none); each candidate is one wanted key, with what the comparison
# needs in one place.
ctypedef struct KeyCand:
    Py_ssize_t length
    unsigned long long head8      # the key's first 8 bytes (zero-padded), as a word
    unsigned long long mask8      # 0xff for each of them that is part of the key
    const char* ptr               # the key (kept alive by _Keys.keys)
    int k                         # its position in the result
    int next                      # the next candidate with the same first byte, or -1

ctypedef struct KeyTable:
    Py_ssize_t n                  # keys asked for (the result's length)
    Py_ssize_t nmatch             # of them, the ones that can match (distinct, no separator)
    unsigned long long* vals      # filled by parse_keyed_c, by position
    char* seen
    int first[256]
    KeyCand* cands

cdef Py_ssize_t parse_keyed_c(const char* b, Py_ssize_t n, KeyTable* t) noexcept nogil
cdef long long parse_value_c(const char* b, Py_ssize_t n, bint* ok) noexcept nogil

cdef class _Keys:
    cdef tuple keys
    cdef KeyTable t
    cdef tuple last               # the previous result, and the values it holds
    cdef unsigned long long* last_vals
    cdef char* last_seen
    cdef tuple result(self)

cdef class _OpenFile:
    cdef int fd
    cdef char* buf
    cdef Py_ssize_t cap
    cdef readonly str path
    cdef Py_ssize_t read_all(self) except -1

cdef class KeyedFile(_OpenFile):
    cdef _Keys _keys
    cpdef tuple read(self)

cdef class ValueFile(_OpenFile):
    cpdef object read(self)

cdef class MeminfoFile(KeyedFile):
    cdef object cls                     # sources.meminfo.Meminfo
    cdef object fallback                # sources.meminfo.from_values (the reference)
    cdef tuple names                    # its field names, interned
    cdef object last                    # the previous sample, and what it holds
    cdef unsigned long long last_u[13]
    cdef char last_has[13]
    cdef list last_objs
    cpdef object sample(self)
