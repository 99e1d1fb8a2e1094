package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// tcpSocket is one line of /proc/<pid>/net/tcp or tcp6.
type tcpSocket struct {
	table, local, state string
}

// tcpListen is the kernel's TCP_LISTEN in /proc/net/tcp's st column.
const tcpListen = "0A"

// processTCPSockets lists the TCP sockets a process holds open: the
// socket inodes among its file descriptors, looked up in the TCP tables of
// its network namespace.
func processTCPSockets(t *testing.T, pid int) []tcpSocket {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("listing the descriptors of %d: %v", pid, err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	var out []tcpSocket
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
			fields := strings.Fields(sc.Text())
			if len(fields) >= 10 && inodes[fields[9]] {
				out = append(out, tcpSocket{table: table, local: fields[1], state: fields[3]})
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestRunnerListensOnNoPort: a runner serving a stream talks to NATS and
// the object store only; it holds no listening TCP socket. The same check
// must find infer dev's listener (the activator's port) and the runner's
// own NATS connection, or it proves nothing.
func TestRunnerListensOnNoPort(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	p := startPlatform(t)
	_, runner := p.endlessStream("60s")
	pid, _ := strconv.Atoi(runner)

	listening := func(socks []tcpSocket) (n int) {
		for _, s := range socks {
			if s.state == tcpListen {
				n++
			}
		}
		return n
	}
	runnerSocks := processTCPSockets(t, pid)
	t.Logf("runner %d: TCP sockets %v", pid, runnerSocks)
	if len(runnerSocks) == 0 {
		t.Fatalf("found no TCP socket of runner %d; it must at least hold its NATS connection", pid)
	}
	for _, s := range runnerSocks {
		if s.state == tcpListen {
			t.Errorf("runner %d listens on %s (%s)", pid, s.local, s.table)
		}
	}
	// Positive control: infer dev serves HTTP, so it listens.
	if n := listening(processTCPSockets(t, p.pid)); n == 0 {
		t.Errorf("found no listening socket of infer dev %d, which serves %s: the check is blind", p.pid, p.url)
	}
}
