package netproxy

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Mesh is a Link for every ordered pair of n nodes, numbered 0..n-1:
// Link(i, j) carries what node i sends to node j.
type Mesh struct {
	n     int
	links [][]*Link
}

// NewMesh starts the n*(n-1) links, with no targets yet.
func NewMesh(n int) (*Mesh, error) {
	m := &Mesh{n: n, links: make([][]*Link, n)}
	for i := range n {
		m.links[i] = make([]*Link, n)
		for j := range n {
			if i == j {
				continue
			}
			l, err := Listen(fmt.Sprintf("%d->%d", i, j))
			if err != nil {
				m.Close()
				return nil, err
			}
			m.links[i][j] = l
		}
	}
	return m, nil
}

// Size is the number of nodes.
func (m *Mesh) Size() int { return m.n }

// Link returns the link from node i to node j.
func (m *Mesh) Link(i, j int) *Link { return m.links[i][j] }

// SetTarget points every link towards node j at addr.
func (m *Mesh) SetTarget(j int, addr string) {
	for i := range m.n {
		if i != j {
			m.links[i][j].SetTarget(addr)
		}
	}
}

// PeerAddrs is node i's KVNODE_TEST_PEER_ADDRS value: for each other node
// j, raft id j+1 is reached through Link(i, j). Raft ids follow join
// order: node 0 bootstraps with id 1, node 1 joins as 2, and so on.
func (m *Mesh) PeerAddrs(i int) string {
	var parts []string
	for j := range m.n {
		if j != i {
			parts = append(parts, fmt.Sprintf("%d=%s", j+1, m.links[i][j].Addr()))
		}
	}
	return strings.Join(parts, ",")
}

// SetOneWay sets the mode of the single link from i to j.
func (m *Mesh) SetOneWay(i, j int, mode Mode, delay time.Duration) {
	m.links[i][j].Set(mode, delay)
}

// SetBoth sets the links between i and j, both ways.
func (m *Mesh) SetBoth(i, j int, mode Mode, delay time.Duration) {
	m.links[i][j].Set(mode, delay)
	m.links[j][i].Set(mode, delay)
}

// Isolate cuts node i off from every other node, both ways, with mode
// (Cut or Blackhole).
func (m *Mesh) Isolate(i int, mode Mode) {
	for j := range m.n {
		if j != i {
			m.SetBoth(i, j, mode, 0)
		}
	}
}

// Split separates the nodes in side from the others, both ways.
func (m *Mesh) Split(side []int, mode Mode) {
	in := map[int]bool{}
	for _, i := range side {
		in[i] = true
	}
	for i := range m.n {
		for j := range m.n {
			if i != j && in[i] != in[j] {
				m.links[i][j].Set(mode, 0)
			}
		}
	}
}

// DelayAll adds d of latency to every link (Pass mode).
func (m *Mesh) DelayAll(d time.Duration) {
	m.each(func(l *Link) { l.Set(Pass, d) })
}

// Heal puts every link back to Pass without delay.
func (m *Mesh) Heal() { m.each(func(l *Link) { l.Set(Pass, 0) }) }

// Describe lists the links not in plain Pass mode, for logs.
func (m *Mesh) Describe() string {
	var parts []string
	m.each(func(l *Link) {
		mode, d := l.Mode()
		if mode != Pass || d != 0 {
			s := l.Name + ":" + mode.String()
			if d != 0 {
				s += "+" + d.String()
			}
			parts = append(parts, s)
		}
	})
	sort.Strings(parts)
	if len(parts) == 0 {
		return "all links pass"
	}
	return strings.Join(parts, " ")
}

// Close stops every link.
func (m *Mesh) Close() {
	m.each(func(l *Link) { l.Close() })
}

func (m *Mesh) each(f func(*Link)) {
	for i := range m.links {
		for _, l := range m.links[i] {
			if l != nil {
				f(l)
			}
		}
	}
}
