# Maps a native Status to the Python exception its code stands for. Included by every binding.
cdef inline int raise_on_error(const Status& st) except -1:
    if st.ok():
        return 0
    cdef str msg = st.message.decode("utf-8", "replace")
    if st.code == StatusCode.kInvalidArgument:
        raise ValueError(msg)
    if st.code == StatusCode.kOutOfRange:
        raise IndexError(msg)
    if st.code == StatusCode.kOutOfMemory:
        raise MemoryError(msg)
    raise RuntimeError(msg)
