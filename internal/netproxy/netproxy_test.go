package netproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer echoes each line back.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, msg string, timeout time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return line, err
}

func newLink(t *testing.T) *Link {
	t.Helper()
	l, err := Listen("test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	l.SetTarget(echoServer(t))
	return l
}

// dial connects to addr; the test closes the connection when it ends.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestPass(t *testing.T) {
	l := newLink(t)
	c := dial(t, l.Addr())
	if got, err := roundTrip(c, "hello", 2*time.Second); err != nil || got != "hello\n" {
		t.Fatalf("%q %v", got, err)
	}
}

func TestNoTargetResets(t *testing.T) {
	l, err := Listen("none")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		return // reset during the handshake: refused, as wanted
	}
	defer c.Close()
	if _, err := roundTrip(c, "x", 2*time.Second); err == nil {
		t.Fatal("a link without target forwarded")
	}
}

func TestCutResetsExistingAndNew(t *testing.T) {
	l := newLink(t)
	c := dial(t, l.Addr())
	if _, err := roundTrip(c, "a", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	l.Set(Cut, 0)
	if _, err := roundTrip(c, "b", 2*time.Second); err == nil {
		t.Fatal("an existing connection survived the cut")
	}
	c2, err := net.Dial("tcp", l.Addr())
	if err == nil {
		defer c2.Close()
		if _, err := roundTrip(c2, "c", 2*time.Second); err == nil {
			t.Fatal("a new connection passed a cut link")
		}
	}
	l.Set(Pass, 0)
	c3 := dial(t, l.Addr())
	if got, err := roundTrip(c3, "d", 2*time.Second); err != nil || got != "d\n" {
		t.Fatalf("after healing: %q %v", got, err)
	}
}

func TestDelay(t *testing.T) {
	l := newLink(t)
	l.Set(Pass, 150*time.Millisecond)
	c := dial(t, l.Addr())
	start := time.Now()
	if got, err := roundTrip(c, "slow", 5*time.Second); err != nil || got != "slow\n" {
		t.Fatalf("%q %v", got, err)
	}
	// Delayed both ways.
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Fatalf("round trip took %v, want >= 300ms", el)
	}
}

func TestBlackholeSwallowsThenResets(t *testing.T) {
	l := newLink(t)
	c := dial(t, l.Addr())
	if _, err := roundTrip(c, "a", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	l.Set(Blackhole, 0)
	// The write succeeds; no answer comes.
	_, err := roundTrip(c, "lost", 300*time.Millisecond)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("black-holed round trip: %v, want a timeout", err)
	}
	l.Set(Pass, 0)
	if _, err := roundTrip(c, "after", 2*time.Second); err == nil {
		t.Fatal("a connection that lost bytes was not reset")
	}
	c2 := dial(t, l.Addr())
	if got, err := roundTrip(c2, "fresh", 2*time.Second); err != nil || got != "fresh\n" {
		t.Fatalf("%q %v", got, err)
	}
}

func TestMesh(t *testing.T) {
	m, err := NewMesh(3)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for j := range 3 {
		m.SetTarget(j, echoServer(t))
	}
	if got := m.PeerAddrs(1); got == "" || got[0:2] != "1=" {
		t.Fatalf("PeerAddrs(1) = %q", got)
	}
	m.Isolate(2, Cut)
	if d := m.Describe(); d != "0->2:cut 1->2:cut 2->0:cut 2->1:cut" {
		t.Fatalf("Describe: %s", d)
	}
	c, err := net.Dial("tcp", m.Link(0, 1).Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := roundTrip(c, "ok", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	m.Heal()
	if d := m.Describe(); d != "all links pass" {
		t.Fatal(d)
	}
}
