"""A connection storm: N clients connect at once (as after a deploy or a load
balancer's failover), each sends one request and reads the start of its answer.
Non-blocking sockets and one epoll loop, so that all N connects are issued within a
few milliseconds. Prints how long the burst took to be answered, the slowest
connections, and how many waited over a second (a connection the full accept queue
dropped is retried after 1 s). Loopback only; bounded by a 60 s deadline.
    python3 storm.py PORT [N]
"""
import errno
import selectors
import socket
import sys
import time

PORT = int(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 9000
DEADLINE = 60.0

sel = selectors.DefaultSelector()
started = {}
took = []
failed = 0
t0 = time.monotonic()
for i in range(N):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    err = s.connect_ex(("127.0.0.1", PORT))
    if err not in (0, errno.EINPROGRESS):
        failed += 1
        s.close()
        continue
    started[s] = time.monotonic()
    sel.register(s, selectors.EVENT_WRITE, i)
issued = time.monotonic() - t0

while sel.get_map() and time.monotonic() - t0 < DEADLINE:
    for key, events in sel.select(timeout=1.0):
        s, i = key.fileobj, key.data
        if events & selectors.EVENT_WRITE:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                failed += 1
                sel.unregister(s)
                s.close()
                continue
            s.send(b"GET /rest/v1/items HTTP/1.1\r\nhost: storm\r\nx-user-id: u%d\r\n\r\n" % i)
            sel.modify(s, selectors.EVENT_READ, i)
        else:
            data = s.recv(4096)
            if data.startswith(b"HTTP/1.1 200"):
                took.append(time.monotonic() - started[s])
            else:
                failed += 1
            sel.unregister(s)
            s.close()
failed += len(sel.get_map())
took.sort()
total = time.monotonic() - t0
p = lambda q: took[min(len(took) - 1, int(q * len(took)))] if took else float("nan")
print(f"{N} connects issued in {issued:.2f} s; answered {len(took)}, failed {failed}; "
      f"burst took {total:.2f} s; per connection p50 {p(0.5):.3f} s, p99 {p(0.99):.3f} s, "
      f"max {took[-1] if took else float('nan'):.3f} s; over 1 s: {sum(t > 1 for t in took)}")
