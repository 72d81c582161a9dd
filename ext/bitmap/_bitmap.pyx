# cython: auto_pickle=False, autotestdict=False
"""Piece bitsets and rarest-first ordering; the pure-Python twin is ``dragonfly.common._pyimpl.bitmap``.

Piece ``i`` is bit ``i % 8`` (least significant first) of byte ``i // 8``; ``to_bytes`` is that layout, with the
padding bits of the last byte zero. It is a storage and wire format, so both implementations must keep it.
Internally the bits live in little-endian order in 64-bit words, so on little-endian hosts the word array and
the byte layout are the same memory.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_FromSsize_t
from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_INCREF
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memset

cdef extern from "Python.h":
    # Declared here because Cython's own declaration cannot take NULL, which asks for clipping instead of raising.
    Py_ssize_t PyNumber_AsSsize_t(object o, PyObject* exc) except? -1

cdef extern from *:
    """
    #ifndef DRAGONFLY_BUILD_PROFILE
    #define DRAGONFLY_BUILD_PROFILE "unknown"
    #endif
    /* setup.py passes the Cargo workspace version, the one version of all three distributions. */
    #ifndef DRAGONFLY_VERSION
    #define DRAGONFLY_VERSION "unknown"
    #endif

    /* The word array is little-endian; on little-endian hosts loading and storing bytes is a plain copy. */
    static void df_store_le(uint8_t *out, const uint64_t *words, Py_ssize_t nbytes) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(out, words, (size_t)nbytes);
    #else
        for (Py_ssize_t i = 0; i < nbytes; i++) out[i] = (uint8_t)(words[i >> 3] >> ((i & 7) * 8));
    #endif
    }

    static void df_load_le(uint64_t *words, const uint8_t *data, Py_ssize_t nbytes) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(words, data, (size_t)nbytes);
    #else
        for (Py_ssize_t i = 0; i < nbytes; i++) words[i >> 3] |= (uint64_t)data[i] << ((i & 7) * 8);
    #endif
    }

    /* Baseline x86-64 lacks the popcnt instruction, so __builtin_popcountll becomes a libgcc call per word
       (5x slower here); clone the counting loops for CPUs that have it and let the dynamic loader choose. */
    #if defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
    #if __has_attribute(target_clones)
    #define DF_POPCNT_CLONES __attribute__((target_clones("popcnt", "default")))
    #endif
    #endif
    #ifndef DF_POPCNT_CLONES
    #define DF_POPCNT_CLONES
    #endif

    DF_POPCNT_CLONES static Py_ssize_t df_count(const uint64_t *words, Py_ssize_t nwords) {
        Py_ssize_t n = 0;
        for (Py_ssize_t w = 0; w < nwords; w++) n += __builtin_popcountll(words[w]);
        return n;
    }

    DF_POPCNT_CLONES static Py_ssize_t df_count_lacking(const uint64_t *have, const uint64_t *parent, Py_ssize_t nwords) {
        Py_ssize_t n = 0;
        for (Py_ssize_t w = 0; w < nwords; w++) n += __builtin_popcountll(parent[w] & ~have[w]);
        return n;
    }
    """
    const char* DRAGONFLY_BUILD_PROFILE
    const char* DRAGONFLY_VERSION
    void df_store_le(uint8_t* out, const uint64_t* words, Py_ssize_t nbytes) noexcept nogil
    void df_load_le(uint64_t* words, const uint8_t* data, Py_ssize_t nbytes) noexcept nogil
    Py_ssize_t df_count(const uint64_t* words, Py_ssize_t nwords) noexcept nogil
    Py_ssize_t df_count_lacking(const uint64_t* have, const uint64_t* parent, Py_ssize_t nwords) noexcept nogil
    int __builtin_ctzll(unsigned long long x) noexcept nogil

__version__ = DRAGONFLY_VERSION.decode("ascii")
BUILD_PROFILE = DRAGONFLY_BUILD_PROFILE.decode("ascii")
# Piece numbers are u32 on the wire (Vortex requests, scheduler reports).
cdef Py_ssize_t MAX_PIECES = 1 << 32
MAX_SIZE = MAX_PIECES

# Below this much work (64-bit words scanned) releasing and re-taking the GIL costs more than the scan itself.
cdef Py_ssize_t NOGIL_MIN_WORDS = 1 << 14


cdef inline Py_ssize_t _check_size(object size) except -1:
    # Clipping huge ints is harmless: they fail the range check, and the message quotes the original value.
    cdef Py_ssize_t value = PyNumber_AsSsize_t(size, NULL)
    if not 0 <= value <= MAX_PIECES:
        raise ValueError(f"bitmap size must be between 0 and {MAX_PIECES}, got {size}")
    return value


cdef class PieceBitmap:
    """A fixed-size set of piece numbers ``0 .. size-1`` (the pieces a peer has, or wants)."""

    # Bits past ``nbits`` in the last word are always zero: count, equality, to_bytes and the scans rely on it.
    cdef uint64_t* words
    cdef Py_ssize_t nwords
    cdef Py_ssize_t nbits

    def __cinit__(self, size):
        self.nbits = _check_size(size)
        self.nwords = (self.nbits + 63) >> 6
        # One spare word keeps the allocation non-empty for size 0.
        self.words = <uint64_t*>PyMem_Calloc(self.nwords + 1, sizeof(uint64_t))
        if self.words == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.words)

    @classmethod
    def from_bytes(cls, size, const uint8_t[::1] raw not None):
        """Rebuild a bitmap of ``size`` pieces from ``to_bytes`` output; reject a wrong length or set padding."""
        cdef PieceBitmap bitmap = cls(size)
        cdef Py_ssize_t nbytes = (bitmap.nbits + 7) >> 3
        cdef Py_ssize_t tail = bitmap.nbits & 7
        if raw.shape[0] != nbytes:
            raise ValueError(f"bitmap of {bitmap.nbits} pieces needs {nbytes} bytes, got {raw.shape[0]}")
        if tail and raw[nbytes - 1] >> tail:
            raise ValueError("bitmap padding bits must be zero")
        if nbytes:
            df_load_le(bitmap.words, &raw[0], nbytes)
        return bitmap

    @property
    def size(self):
        """Return the number of pieces."""
        return self.nbits

    def __len__(self):
        return self.nbits

    def __eq__(self, other):
        if not isinstance(other, PieceBitmap):
            return NotImplemented
        cdef PieceBitmap that = <PieceBitmap>other
        return self.nbits == that.nbits and memcmp(self.words, that.words, self.nwords * sizeof(uint64_t)) == 0

    def __repr__(self):
        return f"PieceBitmap(size={self.nbits}, count={self.count()})"

    cdef Py_ssize_t _index(self, object piece) except -1:
        # Clipping huge ints is harmless: they fail the range check, and the message quotes the original value.
        cdef Py_ssize_t index = PyNumber_AsSsize_t(piece, NULL)
        if not 0 <= index < self.nbits:
            raise IndexError(f"piece {piece} out of range for a bitmap of {self.nbits} pieces")
        return index

    def set(self, piece):
        """Mark ``piece`` present."""
        cdef Py_ssize_t i = self._index(piece)
        self.words[i >> 6] |= (<uint64_t>1) << (i & 63)

    def clear(self, piece):
        """Mark ``piece`` missing."""
        cdef Py_ssize_t i = self._index(piece)
        self.words[i >> 6] &= ~((<uint64_t>1) << (i & 63))

    def test(self, piece):
        """Return whether ``piece`` is present."""
        cdef Py_ssize_t i = self._index(piece)
        return (self.words[i >> 6] >> (i & 63)) & 1 == 1

    def set_all(self):
        """Mark every piece present."""
        memset(self.words, 0xFF, self.nwords * sizeof(uint64_t))
        if self.nbits & 63:
            self.words[self.nwords - 1] = ((<uint64_t>1) << (self.nbits & 63)) - 1

    def count(self):
        """Return how many pieces are present."""
        return df_count(self.words, self.nwords)

    def is_full(self):
        """Return whether every piece is present (true for an empty bitmap)."""
        return self._next_missing(0) == -1

    cdef Py_ssize_t _next_missing(self, Py_ssize_t start) noexcept nogil:
        if start >= self.nbits:
            return -1
        cdef Py_ssize_t w = start >> 6
        cdef uint64_t missing = ~self.words[w] & (~(<uint64_t>0) << (start & 63))
        while missing == 0:
            w += 1
            if w == self.nwords:
                return -1
            missing = ~self.words[w]
        # Padding bits are zero, so they look missing here: a hit past the end means nothing is missing.
        cdef Py_ssize_t piece = (w << 6) + __builtin_ctzll(missing)
        return piece if piece < self.nbits else -1

    def first_missing(self):
        """Return the lowest missing piece, or -1 when none is missing."""
        return self._next_missing(0)

    def iter_missing(self):
        """Yield the missing pieces in ascending order, each found as of the moment it is asked for."""
        return _MissingPieces(self)

    def missing_from(self, parent):
        """Return, ascending, the pieces ``parent`` has and this bitmap lacks."""
        cdef PieceBitmap other = _check_same_size(self, parent)
        cdef Py_ssize_t w, total = 0, n = df_count_lacking(self.words, other.words, self.nwords)
        cdef uint64_t bits
        # Collected into C memory first: creating the list can run the garbage collector, and with it finalizers
        # that could change either bitmap before the list is full.
        cdef Py_ssize_t* pieces = <Py_ssize_t*>PyMem_Malloc((n + 1) * sizeof(Py_ssize_t))
        if pieces == NULL:
            raise MemoryError()
        try:
            for w in range(self.nwords):
                bits = other.words[w] & ~self.words[w]
                while bits:
                    pieces[total] = (w << 6) + __builtin_ctzll(bits)
                    total += 1
                    bits &= bits - 1
            return _list_of(pieces, total)
        finally:
            PyMem_Free(pieces)

    def present(self):
        """Return, ascending, the pieces present."""
        cdef Py_ssize_t w, total = 0, n = df_count(self.words, self.nwords)
        cdef uint64_t bits
        # Collected into C memory first, as in missing_from.
        cdef Py_ssize_t* pieces = <Py_ssize_t*>PyMem_Malloc((n + 1) * sizeof(Py_ssize_t))
        if pieces == NULL:
            raise MemoryError()
        try:
            for w in range(self.nwords):
                bits = self.words[w]
                while bits:
                    pieces[total] = (w << 6) + __builtin_ctzll(bits)
                    total += 1
                    bits &= bits - 1
            return _list_of(pieces, total)
        finally:
            PyMem_Free(pieces)

    def to_bytes(self):
        """Return the bitmap in its storage layout (see the module docstring)."""
        cdef Py_ssize_t nbytes = (self.nbits + 7) >> 3
        result = PyBytes_FromStringAndSize(NULL, nbytes)
        df_store_le(<uint8_t*>PyBytes_AS_STRING(result), self.words, nbytes)
        return result


cdef class _MissingPieces:
    """Iterator of ``PieceBitmap.iter_missing``; a class rather than a generator for a cheaper ``next()``."""

    cdef PieceBitmap bitmap
    cdef Py_ssize_t start

    def __cinit__(self, PieceBitmap bitmap not None):
        self.bitmap = bitmap
        self.start = 0

    def __iter__(self):
        return self

    def __next__(self):
        cdef Py_ssize_t piece = self.bitmap._next_missing(self.start)
        if piece == -1:
            # Stay exhausted even if pieces are cleared later, like a finished generator.
            self.start = self.bitmap.nbits
            raise StopIteration
        self.start = piece + 1
        return piece


cdef list _list_of(const Py_ssize_t* pieces, Py_ssize_t n):
    cdef list result = PyList_New(n)
    cdef Py_ssize_t i
    for i in range(n):
        item = PyLong_FromSsize_t(pieces[i])
        Py_INCREF(item)  # PyList_SET_ITEM steals a reference the local name still holds.
        PyList_SET_ITEM(result, i, item)
    return result


cdef PieceBitmap _check_same_size(PieceBitmap want, object parent):
    if not isinstance(parent, PieceBitmap):
        raise TypeError(f"expected a PieceBitmap, got {type(parent).__name__}")
    cdef PieceBitmap other = <PieceBitmap>parent
    if other.nbits != want.nbits:
        raise ValueError(f"bitmap sizes differ: {want.nbits} != {other.nbits}")
    return other


cdef Py_ssize_t _order_rarest(
    const uint64_t* want,
    const uint64_t** parents,
    Py_ssize_t nparents,
    Py_ssize_t nbits,
    uint32_t* holders,
    Py_ssize_t* starts,
    Py_ssize_t* order,
) noexcept nogil:
    """Fill ``order`` with the wanted pieces some parent has, fewest holders first; return how many."""
    cdef Py_ssize_t nwords = (nbits + 63) >> 6
    cdef Py_ssize_t p, w, i, c, total = 0
    cdef uint64_t bits
    for p in range(nparents):
        for w in range(nwords):
            bits = parents[p][w] & ~want[w]
            while bits:
                holders[(w << 6) + __builtin_ctzll(bits)] += 1
                bits &= bits - 1
    # Counting sort on the holder count (1 .. nparents); scanning pieces in ascending order keeps ties by number.
    for i in range(nbits):
        starts[holders[i]] += 1
    for c in range(1, nparents + 1):
        total += starts[c]
        starts[c] = total - starts[c]
    for i in range(nbits):
        c = holders[i]
        if c:
            order[starts[c]] = i
            starts[c] += 1
    return total


def rarest_first(want, parents):
    """Return the pieces missing in ``want`` that some parent has, held by fewest parents first, then by number."""
    if not isinstance(want, PieceBitmap):
        raise TypeError(f"expected a PieceBitmap, got {type(want).__name__}")
    cdef PieceBitmap wanted = <PieceBitmap>want
    cdef tuple held = tuple(parents)
    cdef Py_ssize_t nparents = len(held), nbits = wanted.nbits, p, total
    for p in range(nparents):
        _check_same_size(wanted, held[p])
    cdef const uint64_t** words = <const uint64_t**>PyMem_Malloc((nparents + 1) * sizeof(uint64_t*))
    cdef uint32_t* holders = <uint32_t*>PyMem_Calloc(nbits + 1, sizeof(uint32_t))
    cdef Py_ssize_t* starts = <Py_ssize_t*>PyMem_Calloc(nparents + 1, sizeof(Py_ssize_t))
    cdef Py_ssize_t* order = <Py_ssize_t*>PyMem_Malloc((nbits + 1) * sizeof(Py_ssize_t))
    try:
        if words == NULL or holders == NULL or starts == NULL or order == NULL:
            raise MemoryError()
        for p in range(nparents):
            words[p] = (<PieceBitmap>held[p]).words
        # ``held`` keeps every parent alive while the GIL is released; their sizes never change.
        if wanted.nwords * nparents >= NOGIL_MIN_WORDS:
            with nogil:
                total = _order_rarest(wanted.words, words, nparents, nbits, holders, starts, order)
        else:
            total = _order_rarest(wanted.words, words, nparents, nbits, holders, starts, order)
        return _list_of(order, total)
    finally:
        PyMem_Free(words)
        PyMem_Free(holders)
        PyMem_Free(starts)
        PyMem_Free(order)
