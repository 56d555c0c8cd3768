package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// ErrPoolExhausted means every usable address of the pod CIDR is reserved.
var ErrPoolExhausted = errors.New("pod CIDR exhausted")

// Attachment names one CNI attachment: the runtime's container ID and the
// interface name inside the container. It is the key of an IP reservation.
type Attachment struct {
	ContainerID string `json:"containerID"`
	Interface   string `json:"interface"`
}

// Validate refuses keys the CNI runtime could not have sent.
func (a Attachment) Validate() error {
	if !containerIDPattern.MatchString(a.ContainerID) {
		return fmt.Errorf("container ID %q is not a plain identifier", a.ContainerID)
	}
	if a.Interface == "" || len(a.Interface) > 15 || a.Interface == "." || a.Interface == ".." ||
		strings.ContainsAny(a.Interface, "/: \t\n") {
		return fmt.Errorf("interface name %q is not a valid Linux interface name", a.Interface)
	}
	return nil
}

// Allocation is one reserved pod address.
type Allocation struct {
	Attachment
	IP netip.Addr
	// Allocated is when the reservation was made.
	Allocated time.Time
}

// record is what one reservation file holds; the file's name is the address.
type record struct {
	Attachment
	Allocated time.Time `json:"allocated"`
}

// NextFree is the pure allocation step: the first address of prefix after
// last (wrapping around) that is neither taken nor reserved. Starting after
// the previous allocation, rather than at the bottom, keeps a just-released
// address out of use for as long as possible, so a new pod does not inherit
// conntrack state or in-flight packets meant for the old one. Reserved are
// the network address, the gateway (Gateway(prefix)) and, for IPv4, the
// broadcast address. At most limit addresses are examined (0: 1<<20), so a
// huge IPv6 prefix costs bounded time.
func NextFree(prefix netip.Prefix, last netip.Addr, taken func(netip.Addr) bool, limit int) (netip.Addr, bool) {
	prefix = prefix.Masked()
	if limit <= 0 {
		limit = 1 << 20
	}
	if hostBits := prefix.Addr().BitLen() - prefix.Bits(); hostBits < 20 && 1<<hostBits < limit {
		limit = 1 << hostBits
	}
	start := prefix.Addr()
	if last.IsValid() && prefix.Contains(last) {
		start = last.Next()
	}
	gw := Gateway(prefix)
	a := start
	for i := 0; i < limit; i++ {
		if !a.IsValid() || !prefix.Contains(a) {
			a = prefix.Addr() // wrap
		}
		if a != prefix.Addr() && a != gw && !isBroadcast(prefix, a) && !taken(a) {
			return a, true
		}
		a = a.Next()
	}
	return netip.Addr{}, false
}

func isBroadcast(p netip.Prefix, a netip.Addr) bool {
	if !a.Is4() || p.Bits() >= 31 {
		return false
	}
	n := p.Masked().Addr().As4()
	v := uint32(n[0])<<24 | uint32(n[1])<<16 | uint32(n[2])<<8 | uint32(n[3])
	v |= 1<<(32-p.Bits()) - 1
	return a == netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// IPAM reserves pod addresses for attachments. Reservations are kept as one
// small JSON file per address under its directory (written to a temporary
// file, synced and renamed, so a crash leaves either the old or the new
// state), and loaded again when the agent restarts. One mutex serialises
// every change: the CNI plugin processes of parallel ADDs all go through
// the agent, so no two of them can get the same address.
type IPAM struct {
	dir string

	now func() time.Time

	mu     sync.Mutex
	byKey  map[Attachment]netip.Addr
	byAddr map[netip.Addr]record
	last   netip.Addr
}

// OpenIPAM loads the reservations stored in dir (created if missing).
// Unreadable records are skipped: their address becomes free again and is
// overwritten when it is next handed out.
// now (nil: time.Now) stamps new reservations.
func OpenIPAM(dir string, now func() time.Time) (*IPAM, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ipam store: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("ipam store: %w", err)
	}
	if now == nil {
		now = time.Now
	}
	m := &IPAM{dir: dir, now: now, byKey: map[Attachment]netip.Addr{}, byAddr: map[netip.Addr]record{}}
	for _, e := range entries {
		addr, err := netip.ParseAddr(e.Name())
		if err != nil || e.IsDir() {
			if strings.HasPrefix(e.Name(), ".tmp-") {
				_ = os.Remove(filepath.Join(dir, e.Name())) // a write that never completed
			}
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var r record
		if json.Unmarshal(data, &r) != nil || r.Validate() != nil {
			continue
		}
		k := r.Attachment
		if old, dup := m.byKey[k]; dup {
			// Two files for one attachment can only come from a crash between
			// writing the new record and removing the old one: keep one.
			drop := old
			if old.Less(addr) {
				drop = addr
			}
			_ = os.Remove(filepath.Join(dir, drop.String()))
			if drop == addr {
				continue
			}
			delete(m.byAddr, old)
		}
		m.byKey[k], m.byAddr[addr] = addr, r
		if !m.last.IsValid() || m.last.Less(addr) {
			m.last = addr
		}
	}
	return m, nil
}

// Allocate returns the attachment's address in prefix, reserving a new one
// if it holds none. A reservation outside prefix (the node's pod CIDR
// changed) is dropped and replaced. The address is chosen and reserved
// under the lock, and persisted after it, so parallel ADDs wait for each
// other's choice but not for each other's fsync.
func (m *IPAM) Allocate(prefix netip.Prefix, k Attachment) (netip.Addr, error) {
	if err := k.Validate(); err != nil {
		return netip.Addr{}, err
	}
	if !prefix.IsValid() {
		return netip.Addr{}, errors.New("no pod CIDR")
	}
	prefix = prefix.Masked()
	m.mu.Lock()
	if a, ok := m.byKey[k]; ok {
		if prefix.Contains(a) {
			m.mu.Unlock()
			return a, nil
		}
		if err := m.removeLocked(a); err != nil {
			m.mu.Unlock()
			return netip.Addr{}, err
		}
	}
	a, ok := NextFree(prefix, m.last, func(a netip.Addr) bool { _, t := m.byAddr[a]; return t }, 0)
	if !ok {
		n := len(m.byAddr)
		m.mu.Unlock()
		return netip.Addr{}, fmt.Errorf("%w: all usable addresses of %s are reserved (%d reservations)", ErrPoolExhausted, prefix, n)
	}
	r := record{Attachment: k, Allocated: m.now().UTC()}
	m.byKey[k], m.byAddr[a], m.last = a, r, a
	m.mu.Unlock()

	data, err := json.Marshal(r)
	if err == nil {
		err = writeSynced(m.dir, a.String(), data)
	}
	if err != nil {
		m.mu.Lock()
		if cur, ok := m.byAddr[a]; ok && cur == r {
			delete(m.byKey, k)
			delete(m.byAddr, a)
		}
		m.mu.Unlock()
		return netip.Addr{}, fmt.Errorf("persist reservation of %s: %w", a, err)
	}
	return a, nil
}

// Release frees the attachment's address and reports which one it was
// (the zero Addr when it held none: releasing twice is not an error). The
// file goes under the lock, before the address can be handed out again;
// it is not synced: a release lost in a crash is a leak GC reclaims.
func (m *IPAM) Release(k Attachment) (netip.Addr, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.byKey[k]
	if !ok {
		return netip.Addr{}, nil
	}
	return a, m.removeLocked(a)
}

func (m *IPAM) removeLocked(a netip.Addr) error {
	if err := os.Remove(filepath.Join(m.dir, a.String())); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove reservation of %s: %w", a, err)
	}
	delete(m.byKey, m.byAddr[a].Attachment)
	delete(m.byAddr, a)
	return nil
}

// List returns every reservation, ordered by address.
func (m *IPAM) List() []Allocation {
	m.mu.Lock()
	out := make([]Allocation, 0, len(m.byAddr))
	for a, r := range m.byAddr {
		out = append(out, Allocation{Attachment: r.Attachment, IP: a, Allocated: r.Allocated})
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

// writeSynced replaces dir/name with data durably: temp file, fsync,
// rename, fsync of the directory.
func writeSynced(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, ".tmp-"+name+"-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
