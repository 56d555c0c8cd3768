//go:build linux

package soak

import (
	"crypto/rand"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// probe is one steady stream of sequence-numbered UDP datagrams from one
// pod to another: every send time is kept, and the receiver marks what
// arrived. It stops by itself after max probes.
type probe struct {
	name string
	tx   *net.UDPConn
	rx   *net.UDPConn
	tok  [8]byte

	mu   sync.Mutex
	sent []time.Time
	got  []bool

	stop     chan struct{}
	stopOnce sync.Once
	txDone   chan struct{}
	rxDone   chan struct{}
}

// startProbe starts a stream from one pod to another, one datagram every
// interval, at most max datagrams.
func startProbe(from, to *netlab.Pod, interval time.Duration, max int) (*probe, error) {
	dst := netip.AddrPortFrom(to.IP, netlab.RandomPort())
	var rx *net.UDPConn
	if err := netlab.InNS(to.NS, func() error {
		var err error
		rx, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		return nil, err
	}
	tx, err := netlab.DialUDP(from.NS, dst)
	if err != nil {
		rx.Close()
		return nil, err
	}
	p := &probe{name: from.Name + " -> " + to.Name, tx: tx, rx: rx, stop: make(chan struct{}), txDone: make(chan struct{}), rxDone: make(chan struct{})}
	if _, err := rand.Read(p.tok[:]); err != nil {
		panic(err)
	}
	go p.receive()
	go p.send(interval, max)
	return p, nil
}

func (p *probe) send(interval time.Duration, max int) {
	defer close(p.txDone)
	t := time.NewTicker(interval)
	defer t.Stop()
	buf := make([]byte, 12)
	copy(buf, p.tok[:])
	for seq := 0; seq < max; seq++ {
		binary.BigEndian.PutUint32(buf[8:], uint32(seq))
		p.mu.Lock()
		p.sent = append(p.sent, time.Now())
		p.mu.Unlock()
		_, _ = p.tx.Write(buf) // a failed send is a loss
		select {
		case <-t.C:
		case <-p.stop:
			return
		}
	}
}

func (p *probe) receive() {
	defer close(p.rxDone)
	buf := make([]byte, 64)
	for {
		n, err := p.rx.Read(buf)
		if err != nil {
			return // closed
		}
		if n != 12 || [8]byte(buf[:8]) != p.tok {
			continue
		}
		seq := int(binary.BigEndian.Uint32(buf[8:12]))
		p.mu.Lock()
		if seq < len(p.sent) {
			for len(p.got) <= seq {
				p.got = append(p.got, false)
			}
			p.got[seq] = true
		}
		p.mu.Unlock()
	}
}

// finish stops sending, waits grace for stragglers, stops receiving and
// returns the stream's record.
func (p *probe) finish(grace time.Duration) Stream {
	p.stopOnce.Do(func() { close(p.stop) })
	<-p.txDone
	p.tx.Close()
	time.Sleep(grace) // datagrams in flight: nothing to poll for a datagram that may never come
	p.rx.Close()
	<-p.rxDone
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Stream{Name: p.name, Sent: p.sent, Lost: make([]bool, len(p.sent))}
	for i := range s.Lost {
		s.Lost[i] = i >= len(p.got) || !p.got[i]
	}
	return s
}
