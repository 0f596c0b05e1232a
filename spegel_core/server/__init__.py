"""Running the mirror under uvicorn (uvloop + httptools) with zero-copy file sends."""
