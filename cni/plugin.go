package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// cleanupTimeout bounds the agent calls that undo a failed ADD: the
// command's own deadline may be what failed it.
const cleanupTimeout = 3 * time.Second

// Plugin implements the CNI commands. The zero value reaches the agent
// with DialSocket and writes warnings to stderr.
type Plugin struct {
	Dial Dialer
	Log  io.Writer
}

// Funcs are the commands for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC}
}

// About is printed when the binary is run without CNI_COMMAND.
const About = "confmesh-cni: the confmesh CNI plugin (point-to-point veth, IPAM and readiness from the confmesh agent)"

func (p *Plugin) warnf(format string, args ...any) {
	w := p.Log
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, "confmesh-cni: "+format+"\n", args...)
}

func (p *Plugin) connect(conf *NetConf) (AgentClient, func(), error) {
	dial := p.Dial
	if dial == nil {
		dial = DialSocket
	}
	c, closer, err := dial(conf.AgentSocket)
	if err != nil {
		return nil, nil, err
	}
	return c, func() {
		if closer != nil {
			closer.Close()
		}
	}, nil
}

func cniErr(code uint, format string, args ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, args...), "")
}

// agentErr turns a failed agent call into a CNI error: 11 (try again
// later) when the agent is unreachable or not ready yet, 999 otherwise.
func agentErr(what, socket string, err error) *types.Error {
	if errors.Is(err, errAgentDown) {
		return cniErr(types.ErrTryAgainLater, "%v", err)
	}
	if unreachable(err) || status.Code(err) == codes.ResourceExhausted {
		return cniErr(types.ErrTryAgainLater, "confmesh agent at %s: %s: %s", socket, what, agentMessage(err))
	}
	return cniErr(types.ErrInternal, "confmesh agent at %s: %s: %s", socket, what, agentMessage(err))
}

// ErrWrongNetNS is the plugin's own CNI error code (100 and up are the
// plugin's): the plugin was run in a network namespace other than the
// node's, where the agent runs, or the agent could not tell. Nothing was
// changed.
const ErrWrongNetNS uint = 101

// checkCaller asks the agent whether this process runs in the node's
// network namespace; the agent reads that from the kernel (the socket's
// peer credentials), so it is the one that decides. Its answer is judged
// before any other agent answer and before the plugin changes anything
// (ADD sends it together with the read-only Ready and NodeInfo calls).
func checkCaller(ctx context.Context, c AgentClient, socket string) error {
	_, err := c.CheckCaller(ctx, &agentv1.CheckCallerRequest{})
	return callerError(socket, err)
}

// callerError is the CNI error for a failed CheckCaller (nil for none).
func callerError(socket string, err error) error {
	switch {
	case err == nil:
		return nil
	case status.Code(err) == codes.PermissionDenied:
		return cniErr(ErrWrongNetNS, "wrong network namespace: the confmesh agent at %s says: %s; nothing was changed", socket, agentMessage(err))
	case status.Code(err) == codes.Unimplemented:
		// Fail closed: an agent that cannot check cannot vouch for here.
		return cniErr(ErrWrongNetNS, "the confmesh agent at %s cannot check the caller's network namespace (it predates this plugin): refusing; nothing was changed", socket)
	}
	return agentErr("network namespace check", socket, err)
}

// node is what the agent says about the node's pod networking.
type node struct {
	podCIDR netip.Prefix
	gateway netip.Addr
	mtu     int
}

func nodeInfo(ctx context.Context, c AgentClient, socket string) (node, error) {
	ni, err := c.NodeInfo(ctx, &agentv1.NodeInfoRequest{})
	if err != nil {
		return node{}, agentErr("node info", socket, err)
	}
	pod, err1 := netip.ParsePrefix(ni.GetPodCidr())
	gw, err2 := netip.ParseAddr(ni.GetGateway())
	if err := errors.Join(err1, err2); err != nil || !pod.Contains(gw) || ni.GetMtu() < 576 || ni.GetMtu() > 65535 {
		return node{}, cniErr(types.ErrInternal, "confmesh agent at %s sent unusable node info (pod CIDR %q, gateway %q, MTU %d)",
			socket, ni.GetPodCidr(), ni.GetGateway(), ni.GetMtu())
	}
	return node{podCIDR: pod, gateway: gw, mtu: int(ni.GetMtu())}, nil
}

// openNetNS opens CNI_NETNS, naming the variable in the error.
func openNetNS(path string) (ns.NetNS, error) {
	if path == "" {
		return nil, cniErr(types.ErrInvalidEnvironmentVariables, "CNI_NETNS is required")
	}
	n, err := ns.GetNS(path)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		if errors.As(err, &notExist) {
			return nil, cniErr(types.ErrUnknownContainer, "CNI_NETNS %s does not exist", path)
		}
		var notNS ns.NSPathNotNSErr
		if errors.As(err, &notNS) {
			return nil, cniErr(types.ErrInvalidNetNS, "CNI_NETNS %s is not a network namespace", path)
		}
		return nil, cniErr(types.ErrInvalidNetNS, "CNI_NETNS %s: %v", path, err)
	}
	return n, nil
}

func checkAttachmentArgs(args *skel.CmdArgs) error {
	var missing []string
	if args.ContainerID == "" {
		missing = append(missing, "CNI_CONTAINERID")
	}
	if args.IfName == "" {
		missing = append(missing, "CNI_IFNAME")
	}
	if len(missing) > 0 {
		return cniErr(types.ErrInvalidEnvironmentVariables, "required env variables [%s] missing", strings.Join(missing, ","))
	}
	return nil
}

// Add networks one attachment: readiness from the agent, an address from
// the agent's IPAM, the veth pair, then the pod record. Anything that fails
// after the address was reserved undoes what was done, so a failed ADD
// leaves no interface and no reservation behind.
func (p *Plugin) Add(args *skel.CmdArgs) (err error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := checkAttachmentArgs(args); err != nil {
		return err
	}
	pod, err := ParseArgs(args.Args)
	if err != nil {
		return err
	}
	var prev *current.Result
	if conf.PrevResult != nil {
		if prev, err = current.NewResultFromResult(conf.PrevResult); err != nil {
			return cniErr(types.ErrDecodingFailure, "prevResult: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout)
	defer cancel()

	agent, closeAgent, err := p.connect(conf)
	if err != nil {
		return cniErr(types.ErrTryAgainLater, "%v", err)
	}
	defer closeAgent()
	// CheckCaller, Ready and NodeInfo go out together: one wait for the
	// agent instead of three. Their answers are judged in that order, so a
	// caller in the wrong network namespace gets that refusal whatever the
	// others said (the agent refuses each of them from there anyway), and
	// Ready and NodeInfo change nothing.
	var (
		rr         *agentv1.ReadyResponse
		nd         node
		rerr, nerr error
		wg         sync.WaitGroup
	)
	wg.Add(2)
	go func() { defer wg.Done(); rr, rerr = agent.Ready(ctx, &agentv1.ReadyRequest{}) }()
	go func() { defer wg.Done(); nd, nerr = nodeInfo(ctx, agent, conf.AgentSocket) }()
	cerr := checkCaller(ctx, agent, conf.AgentSocket)
	wg.Wait()
	if cerr != nil {
		return cerr
	}
	if rerr != nil {
		return agentErr("readiness", conf.AgentSocket, rerr)
	}
	if !rr.GetReady() {
		return cniErr(types.ErrTryAgainLater, "node not ready for pods: %s", rr.GetReason())
	}
	if nerr != nil {
		return nerr
	}

	netns, err := openNetNS(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	hostVeth := HostVethName(args.ContainerID, args.IfName)
	// Refuse before anything is reserved or created: the interface may be
	// another attachment's, which must be left alone.
	if exists, err := linkExistsIn(netns, args.IfName); err != nil {
		return cniErr(types.ErrInternal, "look up %s in %s: %v", args.IfName, args.Netns, err)
	} else if exists {
		return cniErr(types.ErrInvalidEnvironmentVariables, "CNI_IFNAME: interface %q already exists in %s", args.IfName, args.Netns)
	}

	k := &agentv1.AllocateIPRequest{ContainerId: args.ContainerID, Interface: args.IfName}
	ar, err := agent.AllocateIP(ctx, k)
	if err != nil {
		return agentErr("allocate IP", conf.AgentSocket, err)
	}
	registered := false
	defer func() {
		if err == nil {
			return
		}
		cctx, ccancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer ccancel()
		if terr := teardown(args.Netns, args.IfName, hostVeth); terr != nil {
			p.warnf("ADD %s/%s failed; cleaning up: %v", args.ContainerID, args.IfName, terr)
		}
		if registered {
			if _, uerr := agent.UnregisterPod(cctx, &agentv1.UnregisterPodRequest{ContainerId: args.ContainerID}); uerr != nil {
				p.warnf("ADD %s/%s failed; unregister pod: %v", args.ContainerID, args.IfName, uerr)
			}
		}
		if _, rerr := agent.ReleaseIP(cctx, &agentv1.ReleaseIPRequest{ContainerId: args.ContainerID, Interface: args.IfName}); rerr != nil {
			p.warnf("ADD %s/%s failed; release IP (GC reclaims it): %v", args.ContainerID, args.IfName, rerr)
		}
	}()
	addr, perr := netip.ParseAddr(ar.GetIp())
	if perr != nil || !nd.podCIDR.Contains(addr) {
		return cniErr(types.ErrInternal, "confmesh agent allocated %q, not an address of pod CIDR %s", ar.GetIp(), nd.podCIDR)
	}

	hostIf, contIf, err := setupVeth(netns, args.IfName, hostVeth, nd.mtu, addr, nd.gateway)
	if err != nil {
		var e *types.Error
		if errors.As(err, &e) {
			return e
		}
		return cniErr(types.ErrInternal, "set up veth %s/%s: %v", hostVeth, args.IfName, err)
	}

	_, err = agent.RegisterPod(ctx, &agentv1.RegisterPodRequest{Pod: &agentv1.Pod{
		ContainerId: args.ContainerID, Netns: args.Netns, Interface: args.IfName, Ip: addr.String(),
		Namespace: pod.Namespace, Name: pod.Name, Uid: pod.UID,
	}})
	if err != nil {
		return agentErr("register pod", conf.AgentSocket, err)
	}
	registered = true

	result := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	if prev != nil {
		// Chained after another plugin: pass its result through, with ours added.
		result = prev
	}
	idx := len(result.Interfaces)
	result.Interfaces = append(result.Interfaces, hostIf, contIf)
	bits := addr.BitLen()
	result.IPs = append(result.IPs, &current.IPConfig{
		Interface: current.Int(idx + 1),
		Address:   net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(bits, bits)},
		Gateway:   nd.gateway.AsSlice(),
	})
	result.Routes = append(result.Routes, &types.Route{Dst: net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)}, GW: nd.gateway.AsSlice()})
	if dnsSet(conf.DNS) {
		result.DNS = conf.DNS
	}
	return types.PrintResult(result, conf.CNIVersion)
}

func dnsSet(d types.DNS) bool {
	return len(d.Nameservers) > 0 || len(d.Search) > 0 || len(d.Options) > 0 || d.Domain != ""
}

// Del removes the attachment's veth and gives its address back. It
// succeeds when the netns is gone, when CNI_NETNS is empty, when it already
// ran, and when the agent is down: the address then stays reserved until a
// later DEL or GC releases it (a warning on stderr says so). When the agent
// answers and says this is not the node's network namespace, DEL is
// refused before it removes anything. When the agent is down that cannot
// be checked; DEL still removes the attachment's own veth pair (never a
// sysctl or anything not named for it), because a DEL that waits for the
// agent would keep pods from ever being torn down once confmesh is
// uninstalled.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := checkAttachmentArgs(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout)
	defer cancel()
	agent, closeAgent, err := p.connect(conf)
	if err == nil {
		defer closeAgent()
		_, err = agent.CheckCaller(ctx, &agentv1.CheckCallerRequest{})
		if err != nil && !unreachable(err) {
			return callerError(conf.AgentSocket, err)
		}
	}
	// The interface goes first, so the address is never reused while the
	// old veth still holds it.
	if terr := teardown(args.Netns, args.IfName, HostVethName(args.ContainerID, args.IfName)); terr != nil {
		return cniErr(types.ErrInternal, "remove veth of %s/%s: %v", args.ContainerID, args.IfName, terr)
	}
	if err != nil {
		p.warnf("DEL %s/%s: %v; its address stays reserved until a later DEL or GC", args.ContainerID, args.IfName, err)
		return nil
	}
	if _, err := agent.UnregisterPod(ctx, &agentv1.UnregisterPodRequest{ContainerId: args.ContainerID}); err != nil {
		if unreachable(err) {
			p.warnf("DEL %s/%s: confmesh agent unreachable (%s); its address stays reserved until a later DEL or GC", args.ContainerID, args.IfName, agentMessage(err))
			return nil
		}
		return agentErr("unregister pod", conf.AgentSocket, err)
	}
	if _, err := agent.ReleaseIP(ctx, &agentv1.ReleaseIPRequest{ContainerId: args.ContainerID, Interface: args.IfName}); err != nil {
		if unreachable(err) {
			p.warnf("DEL %s/%s: confmesh agent unreachable (%s); its address stays reserved until a later DEL or GC", args.ContainerID, args.IfName, agentMessage(err))
			return nil
		}
		return agentErr("release IP", conf.AgentSocket, err)
	}
	return nil
}

// Check compares the attachment with prevResult: the container veth (name,
// MAC), its address, the gateway and default routes, the host veth and its
// route to the pod, and, when the agent answers, the address reservation.
// An unreachable agent is not an error here: existing pods keep their
// connectivity while the agent restarts.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := checkAttachmentArgs(args); err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return cniErr(types.ErrInvalidNetworkConfig, "CHECK needs prevResult (the result of the ADD)")
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return cniErr(types.ErrDecodingFailure, "prevResult: %v", err)
	}
	want, err := expectedFromResult(res, args.Netns, args.IfName, HostVethName(args.ContainerID, args.IfName))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout)
	defer cancel()
	// Unreachable is not an error here (existing pods keep their
	// connectivity while the agent restarts); any other refusal is.
	agent, closeAgent, reachErr := p.connect(conf)
	if reachErr == nil {
		defer closeAgent()
		_, reachErr = agent.CheckCaller(ctx, &agentv1.CheckCallerRequest{})
		if reachErr != nil && !unreachable(reachErr) {
			return callerError(conf.AgentSocket, reachErr)
		}
	}
	netns, err := openNetNS(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	if err := checkVeth(netns, want); err != nil {
		return cniErr(types.ErrInternal, "CHECK %s/%s: %v", args.ContainerID, args.IfName, err)
	}
	if reachErr != nil {
		p.warnf("CHECK %s/%s: %v; reservation not checked", args.ContainerID, args.IfName, reachErr)
		return nil
	}
	la, err := agent.ListAllocations(ctx, &agentv1.ListAllocationsRequest{})
	if err != nil {
		if unreachable(err) {
			p.warnf("CHECK %s/%s: confmesh agent unreachable (%s); reservation not checked", args.ContainerID, args.IfName, agentMessage(err))
			return nil
		}
		return agentErr("list allocations", conf.AgentSocket, err)
	}
	for _, a := range la.GetAllocations() {
		if a.GetContainerId() == args.ContainerID && a.GetInterface() == args.IfName {
			if a.GetIp() != want.addr.String() {
				return cniErr(types.ErrInternal, "CHECK %s/%s: the agent reserved %s for this attachment, the interface has %s",
					args.ContainerID, args.IfName, a.GetIp(), want.addr)
			}
			return nil
		}
	}
	return cniErr(types.ErrInternal, "CHECK %s/%s: the agent holds no address reservation for this attachment (%s)", args.ContainerID, args.IfName, want.addr)
}

// Status says whether ADD can work now: 50 (plugin not available) when the
// agent is unreachable, the node is not ready (not attested, rules or
// datapath missing: the agent's reason is in the message), or the pod CIDR
// has no free address.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout)
	defer cancel()
	unavailable := func(format string, a ...any) error {
		return cniErr(types.ErrPluginNotAvailable, format, a...)
	}
	agent, closeAgent, err := p.connect(conf)
	if err != nil {
		return unavailable("%v", err)
	}
	defer closeAgent()
	if err := checkCaller(ctx, agent, conf.AgentSocket); err != nil {
		var e *types.Error
		if errors.As(err, &e) {
			return unavailable("%s", e.Msg)
		}
		return unavailable("%v", err)
	}
	rr, err := agent.Ready(ctx, &agentv1.ReadyRequest{})
	if err != nil {
		return unavailable("confmesh agent at %s: readiness: %s", conf.AgentSocket, agentMessage(err))
	}
	if !rr.GetReady() {
		return unavailable("node not ready for pods: %s", rr.GetReason())
	}
	nd, err := nodeInfo(ctx, agent, conf.AgentSocket)
	if err != nil {
		var e *types.Error
		if errors.As(err, &e) {
			return unavailable("%s", e.Msg)
		}
		return unavailable("%v", err)
	}
	la, err := agent.ListAllocations(ctx, &agentv1.ListAllocationsRequest{})
	if err != nil {
		return unavailable("confmesh agent at %s: list allocations: %s", conf.AgentSocket, agentMessage(err))
	}
	used := 0
	for _, a := range la.GetAllocations() {
		if ip, err := netip.ParseAddr(a.GetIp()); err == nil && nd.podCIDR.Contains(ip) {
			used++
		}
	}
	if free := usable(nd.podCIDR) - used; free <= 0 {
		return unavailable("pod CIDR %s exhausted: %d addresses reserved", nd.podCIDR, used)
	}
	return nil
}

// usable is how many pod addresses prefix offers: all but the network
// address, the gateway and (IPv4) the broadcast address.
func usable(prefix netip.Prefix) int {
	host := prefix.Addr().BitLen() - prefix.Bits()
	if host >= 30 {
		return 1 << 30
	}
	n := 1<<host - 2
	if prefix.Addr().Is4() {
		n--
	}
	return n
}

// GC releases every reservation whose attachment is not in
// cni.dev/valid-attachments (or the older cni.dev/attachments), removing
// its host veth if one is left and forgetting its pod when no valid
// attachment of that container remains. Reservations younger than
// gcGracePeriod (default 1m) are kept: their ADD may still be running.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	grace := conf.gcGrace
	keep := conf.GCKeep()
	keepContainer := map[string]bool{}
	for a := range keep {
		keepContainer[a.ContainerID] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout)
	defer cancel()
	agent, closeAgent, err := p.connect(conf)
	if err != nil {
		return cniErr(types.ErrTryAgainLater, "GC: %v", err)
	}
	defer closeAgent()
	if err := checkCaller(ctx, agent, conf.AgentSocket); err != nil {
		return err
	}
	la, err := agent.ListAllocations(ctx, &agentv1.ListAllocationsRequest{})
	if err != nil {
		return agentErr("GC: list allocations", conf.AgentSocket, err)
	}
	now := time.Now()
	var errs []string
	for _, a := range la.GetAllocations() {
		att := types.GCAttachment{ContainerID: a.GetContainerId(), IfName: a.GetInterface()}
		if keep[att] {
			continue
		}
		if t := a.GetAllocated(); t != nil && now.Sub(t.AsTime()) < grace {
			continue
		}
		if err := deleteHostVeth(HostVethName(att.ContainerID, att.IfName)); err != nil {
			errs = append(errs, fmt.Sprintf("%s/%s: %v", att.ContainerID, att.IfName, err))
		}
		if !keepContainer[att.ContainerID] {
			if _, err := agent.UnregisterPod(ctx, &agentv1.UnregisterPodRequest{ContainerId: att.ContainerID}); err != nil {
				errs = append(errs, fmt.Sprintf("%s/%s: unregister pod: %s", att.ContainerID, att.IfName, agentMessage(err)))
			}
		}
		if _, err := agent.ReleaseIP(ctx, &agentv1.ReleaseIPRequest{ContainerId: att.ContainerID, Interface: att.IfName}); err != nil {
			errs = append(errs, fmt.Sprintf("%s/%s: release %s: %s", att.ContainerID, att.IfName, a.GetIp(), agentMessage(err)))
		}
	}
	if len(errs) > 0 {
		return cniErr(types.ErrInternal, "GC: %s", strings.Join(errs, "; "))
	}
	return nil
}

// Main runs the plugin as a process: the body of cmd/confmesh-cni. It
// validates the configuration itself before handing over to skel, so that
// a missing or unsupported cniVersion, a missing name or malformed JSON is
// reported in the plugin's own words (see ParseConfig) rather than as
// skel's generic version mismatch.
func Main(p *Plugin) {
	if cmd := os.Getenv("CNI_COMMAND"); cmd != "" && cmd != "VERSION" {
		data, err := io.ReadAll(os.Stdin)
		if err != nil {
			exitWith(cniErr(types.ErrIOFailure, "read network configuration from stdin: %v", err))
		}
		if _, err := ParseConfig(data); err != nil {
			exitWith(err)
		}
		r, w, err := os.Pipe()
		if err != nil {
			exitWith(cniErr(types.ErrIOFailure, "%v", err))
		}
		go func() {
			_, _ = w.Write(data)
			w.Close()
		}()
		os.Stdin = r
	}
	skel.PluginMainFuncs(p.Funcs(), VersionInfo, About)
}

func exitWith(err error) {
	var e *types.Error
	if !errors.As(err, &e) {
		e = cniErr(types.ErrInternal, "%v", err)
	}
	_ = e.Print()
	os.Exit(1)
}
