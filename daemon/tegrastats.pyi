"""Type stubs for the compiled aal_core.tegrastats (ext/tegrastats.pyx)."""

def parse_tegrastats(line: bytes | bytearray | memoryview) -> dict:
    """One tegrastats line → the tegrastats.latest payload; ParseError when nothing in it parses."""
