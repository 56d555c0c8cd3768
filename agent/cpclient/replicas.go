package cpclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Default bounds on one replica's dial (TCP, TLS and the verification of
// its evidence).
const (
	// DefaultReplicaTimeout applies when there are several replicas: a
	// dead or unreachable replica costs at most this before the next is
	// tried (a refused connection costs next to nothing).
	DefaultReplicaTimeout = 4 * time.Second
	// DefaultSingleTimeout applies when there is only one.
	DefaultSingleTimeout = 15 * time.Second
)

// ParseAddrs splits a comma-separated list of control-plane replica
// addresses (HOST:PORT each) and validates it (ValidateAddrs).
func ParseAddrs(list string) ([]string, error) {
	if strings.TrimSpace(list) == "" {
		return nil, errors.New("no control-plane address: want HOST:PORT[,HOST:PORT...]")
	}
	parts := strings.Split(list, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	if err := ValidateAddrs(parts); err != nil {
		return nil, err
	}
	return parts, nil
}

// ValidateAddrs checks a list of control-plane replica addresses: at least
// one, each HOST:PORT with a non-empty host and a port in 1-65535, none
// twice. The error names the offending entry (1-based) and its text.
func ValidateAddrs(addrs []string) error {
	if len(addrs) == 0 {
		return errors.New("no control-plane address: want HOST:PORT[,HOST:PORT...]")
	}
	seen := map[string]int{}
	for i, a := range addrs {
		n := i + 1
		if strings.TrimSpace(a) == "" {
			return fmt.Errorf("control-plane address %d is empty: want HOST:PORT[,HOST:PORT...]", n)
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return fmt.Errorf("control-plane address %d %q: want HOST:PORT: %v", n, a, err)
		}
		if host == "" {
			return fmt.Errorf("control-plane address %d %q: empty host", n, a)
		}
		if strings.ContainsAny(host, " \t/") {
			return fmt.Errorf("control-plane address %d %q: host %q is not a host name or IP address", n, a, host)
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil || p == 0 {
			return fmt.Errorf("control-plane address %d %q: port %q is not a number in 1-65535", n, a, port)
		}
		if j, dup := seen[a]; dup {
			return fmt.Errorf("control-plane address %d %q repeats address %d", n, a, j)
		}
		seen[a] = n
	}
	return nil
}

// Replicas is the list of control-plane replicas an agent may use and the
// one that worked last. Every dial starts at that one and tries the others
// in turn. A replica counts as working once its evidence verified and the
// operation asked of it got an answer other than "unavailable". Safe for
// concurrent use.
type Replicas struct {
	// Timeout bounds each replica's dial (NewReplicas sets
	// DefaultReplicaTimeout, or DefaultSingleTimeout for one replica;
	// 0: only the caller's context bounds it).
	Timeout time.Duration
	// OnFailover, if set, is called (outside any lock) when a replica
	// other than the one that worked last starts working.
	OnFailover func(from, to string)

	mu        sync.Mutex
	addrs     []string
	cur       int  // index of the replica that worked last
	used      bool // cur has worked at least once
	failovers uint64
}

// NewReplicas validates addrs (ValidateAddrs) and starts at the first.
func NewReplicas(addrs []string) (*Replicas, error) {
	if err := ValidateAddrs(addrs); err != nil {
		return nil, err
	}
	t := DefaultReplicaTimeout
	if len(addrs) == 1 {
		t = DefaultSingleTimeout
	}
	return &Replicas{Timeout: t, addrs: append([]string(nil), addrs...)}, nil
}

// Addrs returns every replica address in configured order.
func (r *Replicas) Addrs() []string { return append([]string(nil), r.addrs...) }

// Current returns the replica that worked last ("" before any did).
func (r *Replicas) Current() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.used {
		return ""
	}
	return r.addrs[r.cur]
}

// Failovers counts the times a replica other than the one that worked
// last started working.
func (r *Replicas) Failovers() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failovers
}

// Order returns the addresses in the order the next dial tries them: the
// one that worked last first, then the ones after it, wrapping around.
func (r *Replicas) Order() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.addrs))
	for i := range r.addrs {
		out = append(out, r.addrs[(r.cur+i)%len(r.addrs)])
	}
	return out
}

// worked records that addr answered; it reports whether that is a
// failover (another replica than the one that worked last).
func (r *Replicas) worked(addr string) bool {
	r.mu.Lock()
	from, failover := "", false
	for i, a := range r.addrs {
		if a != addr {
			continue
		}
		failover = r.used && i != r.cur
		if failover {
			r.failovers++
			from = r.addrs[r.cur]
		}
		r.cur, r.used = i, true
		break
	}
	cb := r.OnFailover
	r.mu.Unlock()
	if failover && cb != nil {
		cb(from, addr)
	}
	return failover
}

// Unavailable reports whether err means "this replica cannot serve this
// now" (down, shutting down, cut off from the shared state, too slow) as
// opposed to an answer: the next replica should be asked. A refusal, a
// verdict on this node, is an answer.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	if _, ok := AsRefusal(err); ok {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// Dial connects to the replicas in Order, verifying each one's own
// evidence exactly as Dial does (cfg.Addr is replaced by each address in
// turn), and runs op on the first connection that verifies. When op fails
// with an Unavailable error the next replica is tried; any other result
// (success, a refusal, another error) is that replica's answer, and the
// replica becomes the one that worked last. op nil: dialing is the
// operation. On success the connection is returned open (the caller
// closes it); on failure every connection is closed and the error names
// each replica's failure.
//
// A replica whose evidence does not verify is never sent anything; the
// next one is tried.
func (r *Replicas) Dial(ctx context.Context, cfg Config, op func(context.Context, *Conn) error) (*Conn, error) {
	var errs []error
	for _, addr := range r.Order() {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		c := cfg
		c.Addr = addr
		dctx, cancel := ctx, context.CancelFunc(func() {})
		if r.Timeout > 0 {
			dctx, cancel = context.WithTimeout(ctx, r.Timeout)
		}
		conn, err := Dial(dctx, c)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("control plane %s: %w", addr, err))
			continue
		}
		if op != nil {
			if err := op(ctx, conn); err != nil {
				if Unavailable(err) && ctx.Err() == nil {
					conn.Close()
					errs = append(errs, fmt.Errorf("control plane %s: %w", addr, err))
					continue
				}
				r.worked(addr)
				conn.Close()
				return nil, err
			}
		}
		r.worked(addr)
		return conn, nil
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, fmt.Errorf("no control-plane replica answered: %w", errors.Join(errs...))
}
