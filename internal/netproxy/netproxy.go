// Package netproxy is a userland TCP proxy for fault tests: one Link per
// directed pair of nodes (A dials B through it), whose mode can be changed
// at any time to pass traffic, cut it, delay it or black-hole it.
//
// TCP cannot lose a segment in the middle of a stream without breaking the
// framing above it, so "drop" is a black hole: the link accepts and reads
// whatever is sent and forwards nothing, so the sender sees its writes
// succeed while nothing arrives; when the link leaves that mode, every
// connection that lost bytes is reset. "Cut" resets every connection at
// once and resets new ones as soon as they are accepted, as a peer whose
// host is down would be (the dialer sees its connection refused or reset).
//
// A Mesh holds the links of every ordered pair of n nodes and builds the
// partitions of a nemesis from them: isolate a node, split the nodes in
// two, cut a single direction, and heal.
package netproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Mode is what a Link does with traffic.
type Mode int

const (
	// Pass forwards traffic both ways (with the link's delay, if any).
	Pass Mode = iota
	// Cut resets every connection and every new one.
	Cut
	// Blackhole accepts connections and reads from them, but forwards
	// nothing; the connections are reset when the link leaves the mode.
	Blackhole
)

func (m Mode) String() string {
	switch m {
	case Pass:
		return "pass"
	case Cut:
		return "cut"
	case Blackhole:
		return "blackhole"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// Link is a proxy from one listening address to a target address.
type Link struct {
	Name string
	ln   net.Listener

	mu     sync.Mutex
	target string
	mode   Mode
	delay  time.Duration
	conns  map[*pair]struct{}
	closed bool
	wg     sync.WaitGroup

	// stats
	accepted, refused int
}

// pair is one proxied connection: the accepted one and the one dialed to
// the target.
type pair struct {
	l        *Link
	in, out  net.Conn
	once     sync.Once
	dirty    bool // lost bytes in a black hole: reset on leaving it
	done     chan struct{}
	outReady chan struct{}
}

// Listen starts a link on a free loopback port. Its target may be set
// later (SetTarget); until then connections are reset.
func Listen(name string) (*Link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &Link{Name: name, ln: ln, conns: map[*pair]struct{}{}}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// Addr is the address to dial instead of the target.
func (l *Link) Addr() string { return l.ln.Addr().String() }

// SetTarget sets where connections go; it applies to new connections.
func (l *Link) SetTarget(addr string) {
	l.mu.Lock()
	l.target = addr
	l.mu.Unlock()
}

// Mode returns the link's mode and delay.
func (l *Link) Mode() (Mode, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mode, l.delay
}

// Set changes the link's mode and per-chunk delay. Leaving Blackhole
// resets the connections that lost bytes in it; entering Cut resets every
// connection.
func (l *Link) Set(m Mode, delay time.Duration) {
	l.mu.Lock()
	prev := l.mode
	l.mode, l.delay = m, delay
	var reset []*pair
	for p := range l.conns {
		if m == Cut || (prev == Blackhole && m != Blackhole && p.dirty) {
			reset = append(reset, p)
		}
	}
	l.mu.Unlock()
	for _, p := range reset {
		p.reset()
	}
}

// Stats returns how many connections the link accepted and how many it
// reset on arrival because it was cut.
func (l *Link) Stats() (accepted, refused int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.accepted, l.refused
}

// Close stops the link and resets every connection.
func (l *Link) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	var all []*pair
	for p := range l.conns {
		all = append(all, p)
	}
	l.mu.Unlock()
	err := l.ln.Close()
	for _, p := range all {
		p.reset()
	}
	l.wg.Wait()
	return err
}

func (l *Link) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			resetConn(c)
			return
		}
		l.accepted++
		target, mode := l.target, l.mode
		if mode == Cut || target == "" {
			l.refused++
			l.mu.Unlock()
			resetConn(c)
			continue
		}
		p := &pair{l: l, in: c, done: make(chan struct{}), outReady: make(chan struct{})}
		l.conns[p] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go p.run(target)
	}
}

// resetConn closes c with an RST rather than a FIN.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

func (p *pair) reset() {
	p.once.Do(func() {
		p.l.mu.Lock()
		close(p.done)
		out := p.out
		p.l.mu.Unlock()
		resetConn(p.in)
		if out != nil {
			resetConn(out)
		}
	})
}

func (p *pair) run(target string) {
	defer p.l.wg.Done()
	defer func() {
		p.l.mu.Lock()
		delete(p.l.conns, p)
		p.l.mu.Unlock()
	}()
	// The dial happens in the background: a black-holed link accepts and
	// swallows bytes even when the target would not answer.
	go func() {
		out, err := net.DialTimeout("tcp", target, 2*time.Second)
		p.l.mu.Lock()
		select {
		case <-p.done:
			p.l.mu.Unlock()
			if out != nil {
				resetConn(out)
			}
			return
		default:
		}
		if err != nil {
			if p.l.mode == Blackhole {
				// Keep swallowing; leaving the mode resets it.
				p.dirty = true
				p.l.mu.Unlock()
				return
			}
			p.l.mu.Unlock()
			p.reset()
			return
		}
		p.out = out
		p.l.mu.Unlock()
		close(p.outReady)
	}()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.copy(p.in, func() net.Conn { return p.out }, true) }()
	go func() {
		defer wg.Done()
		select {
		case <-p.outReady:
			p.copy(p.out, func() net.Conn { return p.in }, false)
		case <-p.done:
		}
	}()
	wg.Wait()
	p.reset()
}

// chunk is bytes read from one side, due to be written at a time.
type chunk struct {
	b   []byte
	due time.Time
}

// copy moves bytes from src to dst() through the link's current mode.
// Reading and writing are separate goroutines joined by a queue, so a
// delay holds bytes back without slowing the reading: latency, not
// bandwidth.
func (p *pair) copy(src net.Conn, dst func() net.Conn, waitOut bool) {
	q := make(chan chunk, 1024)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		if waitOut {
			select {
			case <-p.outReady:
			case <-p.done:
				for range q {
				}
				return
			}
		}
		for c := range q {
			if d := time.Until(c.due); d > 0 {
				select {
				case <-time.After(d):
				case <-p.done:
				}
			}
			select {
			case <-p.done:
				continue // drain
			default:
			}
			if _, err := dst().Write(c.b); err != nil {
				p.reset()
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.l.mu.Lock()
			mode, delay := p.l.mode, p.l.delay
			if mode == Blackhole {
				p.dirty = true
			}
			p.l.mu.Unlock()
			switch mode {
			case Pass:
				b := append([]byte(nil), buf[:n]...)
				select {
				case q <- chunk{b: b, due: time.Now().Add(delay)}:
				case <-p.done:
				}
			case Blackhole:
				// swallowed
			case Cut:
				p.reset()
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				// Half-close: pass the FIN on once the queue is written.
				close(q)
				<-writerDone
				if tc, ok := dst().(*net.TCPConn); ok && dst() != nil {
					_ = tc.CloseWrite()
				}
				return
			}
			break
		}
	}
	p.reset()
	close(q)
	<-writerDone
}
