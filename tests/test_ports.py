"""The test session's ports: a block handed out is leased, so another process on the machine (a second
test session, a benchmark) can never be handed the same ports while a server is starting on them."""

import subprocess
import sys

TRY_LEASE = "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"


def test_a_port_block_handed_out_is_leased_against_other_processes(free_port_block, port_leases):
    base = free_port_block(3)
    for port in range(base, base + 3):
        other = subprocess.run([sys.executable, "-c", TRY_LEASE, str(port_leases / str(port))], capture_output=True)
        assert other.returncode != 0 and b"BlockingIOError" in other.stderr, port
    again = {p for b in [free_port_block(3) for _ in range(20)] for p in range(b, b + 3)}
    assert not again & set(range(base, base + 3))  # nor handed out twice in this session
