package testenv

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSCluster is a JetStream cluster of embedded NATS servers on loopback,
// routed to each other as an operator's three machines would be. It is
// what a test runs replicated queues (--queue-replicas 3) against.
type NATSCluster struct {
	Servers []*server.Server
}

// StartNATSCluster starts n clustered JetStream servers named n1…nN, each
// with its own store directory, and waits until the cluster has elected a
// JetStream meta leader (before that, creating a stream fails). They shut
// down when the test ends.
func StartNATSCluster(t testing.TB, n int) *NATSCluster {
	t.Helper()
	clusterPorts := make([]int, n)
	var routes []string
	for i := range clusterPorts {
		clusterPorts[i] = FreePort(t)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", clusterPorts[i]))
	}
	c := &NATSCluster{}
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       FreePort(t),
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoLog:      true,
			NoSigs:     true,
			Cluster: server.ClusterOpts{
				Name: "infer-test",
				Host: "127.0.0.1",
				Port: clusterPorts[i],
			},
			Routes: server.RoutesFromStr(strings.Join(routes, ",")),
		}
		ns, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("testenv: creating NATS server n%d: %v", i+1, err)
		}
		go ns.Start()
		t.Cleanup(func() {
			ns.Shutdown()
			ns.WaitForShutdown()
		})
		c.Servers = append(c.Servers, ns)
	}
	for _, ns := range c.Servers {
		if !ns.ReadyForConnections(10 * time.Second) {
			t.Fatalf("testenv: NATS server %s not ready after 10s", ns.Name())
		}
	}
	nc, err := nats.Connect(c.URL())
	if err != nil {
		t.Fatalf("testenv: connecting to the NATS cluster: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		info, err := js.AccountInfo(ctx)
		cancel()
		if err == nil && info != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: the NATS cluster has no JetStream leader after 30s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

// URL is every server's client URL, comma-separated, as INFER_NATS_URL
// takes a cluster.
func (c *NATSCluster) URL() string {
	var urls []string
	for _, ns := range c.Servers {
		urls = append(urls, ns.ClientURL())
	}
	return strings.Join(urls, ",")
}

// Server returns the server named name, or nil.
func (c *NATSCluster) Server(name string) *server.Server {
	for _, ns := range c.Servers {
		if ns.Name() == name {
			return ns
		}
	}
	return nil
}
