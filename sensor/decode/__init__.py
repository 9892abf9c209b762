"""Protocol decoders: pure functions, bytes in, records (or a Weird) out; they never raise."""
