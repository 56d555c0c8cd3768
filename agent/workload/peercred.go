package workload

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// PeerCred is the AuthInfo of a Workload API connection: the kernel's
// SO_PEERCRED of the unix socket (the credentials of the process that
// called connect()), and that process's start time read right after accept,
// the anchor of the PID-reuse guard.
type PeerCred struct {
	PID int32
	UID uint32
	GID uint32
	// StartTime is the process's start time at handshake; StartErr says why
	// it could not be read (the process was already gone).
	StartTime uint64
	StartErr  error
}

// AuthType implements credentials.AuthInfo.
func (PeerCred) AuthType() string { return "peercred" }

// peerCredCreds are server-side transport credentials for a unix listener:
// no encryption (the socket is local), only the peer's credentials.
type peerCredCreds struct {
	proc Proc
}

func newPeerCredCreds(p Proc) credentials.TransportCredentials { return &peerCredCreds{proc: p} }

// PeerCredentials are server-side gRPC transport credentials for a unix
// listener that give every call a PeerCred AuthInfo (peer.FromContext):
// the connecting process's SO_PEERCRED and start time. Other local APIs of
// the agent use them to tell where a caller runs (CallerNetNS).
func PeerCredentials(p Proc) credentials.TransportCredentials { return newPeerCredCreds(p) }

// CallerNetNS returns the network namespace of the process behind cred,
// guarded against PID reuse: the process's start time must be the one
// read at connect time both before and after the namespace is read.
func CallerNetNS(p Proc, cred PeerCred) (NetNSID, error) {
	pid := cred.PID
	if pid <= 0 {
		return NetNSID{}, errors.New("caller's pid is not visible to the agent (run the agent in the host PID namespace)")
	}
	if cred.StartErr != nil {
		return NetNSID{}, fmt.Errorf("caller pid %d could not be examined at connect time: %w", pid, cred.StartErr)
	}
	before, err := p.StartTime(pid)
	if err != nil {
		return NetNSID{}, fmt.Errorf("caller pid %d: %w", pid, err)
	}
	if before != cred.StartTime {
		return NetNSID{}, fmt.Errorf("caller pid %d was reused by another process since it connected (start time %d, now %d)", pid, cred.StartTime, before)
	}
	ns, err := p.NetNS(pid)
	if err != nil {
		return NetNSID{}, fmt.Errorf("caller pid %d: network namespace: %w", pid, err)
	}
	after, err := p.StartTime(pid)
	if err != nil {
		return NetNSID{}, fmt.Errorf("caller pid %d exited during identification: %w", pid, err)
	}
	if after != before {
		return NetNSID{}, fmt.Errorf("caller pid %d was reused by another process during identification (start time %d, then %d)", pid, before, after)
	}
	return ns, nil
}

var errServerOnly = errors.New("workload API peer credentials are server-side only")

func (c *peerCredCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errServerOnly
}

func (c *peerCredCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		conn.Close()
		return nil, nil, fmt.Errorf("workload API connection %T is not a unix socket", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		conn.Close()
		return nil, nil, err
	}
	if credErr != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	info := PeerCred{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}
	if info.PID > 0 {
		info.StartTime, info.StartErr = c.proc.StartTime(info.PID)
	}
	return conn, info, nil
}

func (c *peerCredCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (c *peerCredCreds) Clone() credentials.TransportCredentials { return &peerCredCreds{proc: c.proc} }

func (c *peerCredCreds) OverrideServerName(string) error { return nil }
