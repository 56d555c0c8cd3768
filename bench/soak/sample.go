//go:build linux

package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

func (l *lab) sampleLoop(ctx context.Context) {
	t := time.NewTicker(l.cfg.SampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.sample()
		}
	}
}

// sample records RSS, threads and goroutines of every live agent, datapath
// and control plane.
func (l *lab) sample() {
	type target struct {
		component, owner, netns, metrics string
		pid                              int
	}
	var ts []target
	for _, n := range l.active() {
		if p := n.Agent(); p != nil {
			if done, _ := p.Exited(); !done {
				ts = append(ts, target{"agent", n.Name, n.NS, agentMetrics, p.PID()})
			}
		}
		if pid, err := n.DatapathPID(); err == nil && netlab.PIDAlive(pid) && netlab.IsDatapathOf(pid, n.Device) {
			ts = append(ts, target{"datapath", n.Name, n.NS, datapathMetrics, pid})
		}
	}
	for _, cp := range l.c.ControlPlanes() {
		if p := cp.Process(); p != nil {
			if done, _ := p.Exited(); !done {
				ts = append(ts, target{"controlplane", cp.Name, cp.NS, cpMetrics, p.PID()})
			}
		}
	}
	for _, t := range ts {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", t.pid))
		if err != nil {
			continue
		}
		rss, threads, err := ParseProcStatus(data)
		if err != nil {
			continue
		}
		s := Sample{At: time.Now(), RSSBytes: rss, Threads: threads, Goroutines: -1}
		if m, err := scrape(t.netns, t.metrics); err == nil {
			if g, err := ParseGoroutines(m); err == nil {
				s.Goroutines = g
			}
		}
		key := fmt.Sprintf("%s/%s/%d", t.component, t.owner, t.pid)
		l.mu.Lock()
		p, ok := l.procs[key]
		if !ok {
			p = &Proc{Component: t.component, Owner: t.owner, PID: t.pid}
			l.procs[key] = p
		}
		p.Add(s)
		l.mu.Unlock()
	}
}

// scrape GETs http://addr/metrics inside netns.
func scrape(netns, addr string) ([]byte, error) {
	var conn net.Conn
	if err := netlab.InNS(netns, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	}); err != nil {
		return nil, err
	}
	used := false
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(context.Context, string, string) (net.Conn, error) {
		if used {
			return nil, errors.New("one connection per scrape")
		}
		used = true
		return conn, nil
	}}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + addr + "/metrics")
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 8<<20))
}
