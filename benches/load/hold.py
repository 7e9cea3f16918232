"""Opens N keep-alive connections to 127.0.0.1:PORT, sends one request on each (one at
a time), keeps them all open and prints the RSS in KiB of process PID; then closes."""
import socket
import sys
import time

port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
try:
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(f"GET /rest/v1/items HTTP/1.1\r\nHost: x\r\nx-user-id: user-{i}\r\n\r\n".encode())
        s.recv(65536)
        socks.append(s)
    time.sleep(0.5)
    with open(f"/proc/{pid}/status") as f:
        print(next(line.split()[1] for line in f if line.startswith("VmRSS")))
finally:
    for s in socks:
        s.close()
