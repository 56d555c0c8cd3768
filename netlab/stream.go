//go:build linux

package netlab

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// UDPStream sends count sequence-numbered datagrams, one every interval,
// from one pod to another in the background; Finish tells which never
// arrived.
type UDPStream struct {
	From, To *Pod
	count    int
	token    string
	sent     atomic.Int64
	r        *UDPReceiver
	done     chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
}

// StartUDPStream starts a stream of count datagrams from one pod to another.
func StartUDPStream(from, to *Pod, count int, interval time.Duration) (*UDPStream, error) {
	dst := netip.AddrPortFrom(to.IP, RandomPort())
	r, err := ListenUDP(to.NS, dst)
	if err != nil {
		return nil, err
	}
	conn, err := DialUDP(from.NS, dst)
	if err != nil {
		r.Close()
		return nil, err
	}
	s := &UDPStream{From: from, To: to, count: count, token: fmt.Sprintf("%x", RandomPayload("", 8)), r: r, done: make(chan struct{}), stop: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer conn.Close()
		t := time.NewTicker(interval)
		defer t.Stop()
		for i := range count {
			_, _ = conn.Write(fmt.Appendf(nil, "stream %s seq %06d", s.token, i)) // a failed send is a loss
			s.sent.Add(1)
			select {
			case <-t.C:
			case <-s.stop:
				return
			}
		}
	}()
	return s, nil
}

// Stop ends the sending early; Finish then accounts for the datagrams
// sent until then.
func (s *UDPStream) Stop() { s.stopOnce.Do(func() { close(s.stop) }) }

// Count is how many datagrams the stream sends in all (unless stopped).
func (s *UDPStream) Count() int { return s.count }

// Sent is how many datagrams have been sent so far.
func (s *UDPStream) Sent() int { return int(s.sent.Load()) }

// How long Finish waits for stragglers once the sender is done: until every
// datagram sent has arrived, or none has arrived for StragglerQuiet, and
// StragglerMax at most. On a loaded machine the datapaths can hold a
// stream's tail for well over half a second, which is delay, not loss.
const (
	StragglerQuiet = 2 * time.Second
	StragglerMax   = 15 * time.Second
)

// Finish waits for the sender (bounded by timeout), then for stragglers
// (StragglerQuiet, StragglerMax), stops receiving and returns the sequence
// numbers that never arrived.
func (s *UDPStream) Finish(timeout time.Duration) (missing []int, err error) {
	select {
	case <-s.done:
	case <-time.After(timeout):
		return nil, fmt.Errorf("stream sender still running after %s", timeout)
	}
	got := map[int]bool{}
	collect := func() {
		for _, d := range s.r.Datagrams() {
			var tok string
			var seq int
			if _, err := fmt.Sscanf(string(d), "stream %s seq %d", &tok, &seq); err == nil && tok == s.token {
				got[seq] = true
			}
		}
	}
	start := time.Now()
	progress, seen := start, -1
	for {
		collect()
		if len(got) >= s.Sent() {
			break
		}
		if len(got) > seen {
			progress, seen = time.Now(), len(got)
		}
		if time.Since(progress) > StragglerQuiet || time.Since(start) > StragglerMax {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.r.Close()
	collect() // what arrived while closing
	for i := range s.Sent() {
		if !got[i] {
			missing = append(missing, i)
		}
	}
	return missing, nil
}

// Ranges renders sorted sequence numbers as "3-7, 12".
func Ranges(seqs []int) string {
	var parts []string
	for i := 0; i < len(seqs); {
		j := i
		for j+1 < len(seqs) && seqs[j+1] == seqs[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, fmt.Sprint(seqs[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", seqs[i], seqs[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ", ")
}
