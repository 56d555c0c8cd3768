package cli

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/confmesh/confmesh/pkg/claims"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// The workload verbs of the demo: small SPIFFE clients a user runs inside
// a pod with `confmesh demo exec` (they read SPIFFE_ENDPOINT_SOCKET, as
// every go-spiffe client does), and that the demo's SPIFFE step runs.

// workloadFlags are the authorisation flags of serve and call.
type workloadFlags struct {
	measurement string        // accepted launch measurement (hex)
	tees        []string      // accepted TEE types
	timeout     time.Duration // bound on the whole command
}

func (f *workloadFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.measurement, "measurement", strings.Repeat("00", 48), "the launch `MEASUREMENT` (96 hex digits) the peer's node must have, read from its SVID's claims (default: the simulated nodes' all-zero one)")
	cmd.Flags().StringSliceVar(&f.tees, "tee", []string{claims.TEESimSnp}, "the TEE `TYPES` the peer's node may run on, comma-separated (sev-snp,tdx in production)")
}

// requirement is the pkg/claims requirement the flags describe.
func (f *workloadFlags) requirement() (claims.Requirement, error) {
	m, err := claims.ParseMeasurement(f.measurement)
	if err != nil {
		return claims.Requirement{}, usageErrorf("--measurement: %v", err)
	}
	return claims.Requirement{Measurements: [][]byte{m}, TEEs: f.tees}, nil
}

// x509Source opens the Workload API named by SPIFFE_ENDPOINT_SOCKET and
// waits for this workload's X.509-SVID.
func x509Source(ctx context.Context) (*workloadapi.X509Source, error) {
	if os.Getenv("SPIFFE_ENDPOINT_SOCKET") == "" {
		return nil, failf("SPIFFE_ENDPOINT_SOCKET is not set: run this in a pod (confmesh demo exec NODE/POD -- ...)")
	}
	src, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		return nil, failf("no X.509-SVID from the Workload API at %s: %v", os.Getenv("SPIFFE_ENDPOINT_SOCKET"), err)
	}
	return src, nil
}

// describePeer is "spiffe://... (node node-2, sim-snp, measurement 0000…)".
func describePeer(id spiffeid.ID, c *claims.Claims) string {
	if c == nil {
		return id.String()
	}
	m := c.MeasurementHex()
	if len(m) > 16 {
		m = m[:16] + "…"
	}
	return fmt.Sprintf("%s (node %s, %s, measurement %s)", id, c.NodeName(), c.TEE, m)
}

func newDemoSVIDCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "svid",
		Short: "fetch this pod's X.509-SVID from the Workload API and print its SPIFFE ID and claims",
		Long: `Fetch this workload's X.509-SVID from the SPIFFE Workload API named by
SPIFFE_ENDPOINT_SOCKET (confmesh demo exec sets it in a pod) and print the
SPIFFE ID, the attestation claims of the node it runs on, and the expiry.
Exit 1 when the Workload API gives no identity (the reason is printed).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			addr := os.Getenv("SPIFFE_ENDPOINT_SOCKET")
			if addr == "" {
				return failf("SPIFFE_ENDPOINT_SOCKET is not set: run this in a pod (confmesh demo exec NODE/POD -- ...)")
			}
			client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
			if err != nil {
				return failf("Workload API %s: %v", addr, err)
			}
			defer client.Close()
			svid, err := client.FetchX509SVID(ctx)
			if err != nil {
				return failf("no X.509-SVID: %v", err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "SPIFFE ID:   %s\n", svid.ID)
			if c, err := claims.FromCertificate(svid.Certificates[0]); err == nil {
				fmt.Fprintf(out, "node:        %s\nTEE:         %s\nmeasurement: %s\n", c.NodeID, c.TEE, c.MeasurementHex())
			} else {
				fmt.Fprintf(out, "claims:      %v\n", err)
			}
			fmt.Fprintf(out, "expires:     %s\n", svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
}

func newDemoServeCmd() *cobra.Command {
	var (
		f      workloadFlags
		listen string
		allow  []string
	)
	cmd := &cobra.Command{
		Use:   "serve --listen ADDR --allow SPIFFE-ID [--allow ...]",
		Short: "serve mTLS with this pod's SVID, authorising callers by SPIFFE ID and node claims",
		Long: `Serve SPIFFE mTLS (go-spiffe spiffetls) on --listen with this workload's
X.509-SVID. A caller is accepted only if its SPIFFE ID is one of --allow and
its SVID's claims (pkg/claims) say it runs on a --tee node with launch
measurement --measurement. Every decision is printed as one line
("accepted ..." or "refused ...: reason"); an accepted caller gets one line
back naming what the server saw. Serves until interrupted (SIGINT,
SIGTERM) or for --for.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := f.requirement()
			if err != nil {
				return err
			}
			ids := make([]spiffeid.ID, 0, len(allow))
			for _, a := range allow {
				id, err := spiffeid.FromString(a)
				if err != nil {
					return usageErrorf("--allow %q: %v", a, err)
				}
				ids = append(ids, id)
			}
			if len(ids) == 0 {
				return usageErrorf("--allow: name at least one SPIFFE ID")
			}
			ctx, cancel := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer cancel()
			if f.timeout > 0 {
				ctx, cancel = context.WithTimeout(ctx, f.timeout)
				defer cancel()
			}
			src, err := x509Source(ctx)
			if err != nil {
				return err
			}
			defer src.Close()
			me, err := src.GetX509SVID()
			if err != nil {
				return failf("%v", err)
			}
			out := &lockedWriter{w: cmd.OutOrStdout()}
			inner := claims.Authorize(spiffeid.MatchOneOf(ids...), req)
			authorize := tlsconfig.Authorizer(func(id spiffeid.ID, chains [][]*x509.Certificate) error {
				c, _ := claims.FromVerifiedChains(chains)
				if err := inner(id, chains); err != nil {
					out.printf("refused %s: %v\n", describePeer(id, c), err)
					return err
				}
				out.printf("accepted %s\n", describePeer(id, c))
				return nil
			})
			lis, err := spiffetls.ListenWithMode(ctx, "tcp", listen, spiffetls.MTLSServerWithSource(authorize, src))
			if err != nil {
				return failf("listen %s: %v", listen, err)
			}
			defer lis.Close()
			out.printf("serving %s on %s\n", me.ID, listen)
			go func() {
				<-ctx.Done()
				lis.Close()
			}()
			for {
				conn, err := lis.Accept()
				if err != nil {
					return nil // closed: interrupted or time is up
				}
				go serveOne(conn, me.ID)
			}
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "`ADDR` (IP:PORT) to serve on; required")
	cmd.Flags().StringSliceVar(&allow, "allow", nil, "a caller `SPIFFE-ID` to accept (repeatable)")
	cmd.Flags().DurationVar(&f.timeout, "for", 0, "stop after this long (0: when interrupted)")
	f.add(cmd)
	_ = cmd.MarkFlagRequired("listen")
	return cmd
}

// serveOne completes the handshake (the authorizer decides), reads the
// caller's line and answers with what the server saw.
func serveOne(conn net.Conn, me spiffeid.ID) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if tc, ok := conn.(interface{ Handshake() error }); ok {
		if err := tc.Handshake(); err != nil {
			return // refused (the authorizer printed why) or the caller refused us
		}
	}
	peer, err := spiffetls.PeerIDFromConn(conn)
	if err != nil {
		return
	}
	line, _ := bufio.NewReader(conn).ReadString('\n')
	fmt.Fprintf(conn, "%s here: hello %s, you said %q\n", me, peer, strings.TrimSpace(line))
}

func newDemoCallCmd() *cobra.Command {
	var (
		f        workloadFlags
		serverID string
		message  string
	)
	cmd := &cobra.Command{
		Use:   "call ADDR --server-id SPIFFE-ID [--message TEXT]",
		Short: "call a serve'ing workload over SPIFFE mTLS, checking its SPIFFE ID and node claims",
		Long: `Dial ADDR with SPIFFE mTLS using this workload's X.509-SVID, accept the
server only if it presents --server-id on a --tee node with launch
measurement --measurement (pkg/claims), send --message and print the reply.
Exit 1 when either side refuses (the error says which check failed).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.requirement()
			if err != nil {
				return err
			}
			want, err := spiffeid.FromString(serverID)
			if err != nil {
				return usageErrorf("--server-id %q: %v", serverID, err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			src, err := x509Source(ctx)
			if err != nil {
				return err
			}
			defer src.Close()
			me, err := src.GetX509SVID()
			if err != nil {
				return failf("%v", err)
			}
			var seen *claims.Claims
			authorize := claims.Authorize(spiffeid.MatchID(want), req)
			conn, err := spiffetls.DialWithMode(ctx, "tcp", args[0],
				spiffetls.MTLSClientWithSource(func(id spiffeid.ID, chains [][]*x509.Certificate) error {
					seen, _ = claims.FromVerifiedChains(chains)
					return authorize(id, chains)
				}, src),
				spiffetls.WithDialer(&net.Dialer{Timeout: f.timeout}))
			if err != nil {
				return failf("mTLS %s -> %s: %v", me.ID, args[0], err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(f.timeout))
			if _, err := fmt.Fprintln(conn, message); err != nil {
				return failf("mTLS %s -> %s: %v", me.ID, args[0], err)
			}
			reply, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil {
				// TLS 1.3: the server's verdict on our certificate arrives
				// after our handshake completed, with the first read.
				return failf("mTLS %s -> %s: %v", me.ID, args[0], err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "mTLS ok: I am %s; server %s\n", me.ID, describePeer(want, seen))
			fmt.Fprintf(out, "reply: %s\n", strings.TrimSpace(reply))
			return nil
		},
	}
	cmd.Flags().StringVar(&serverID, "server-id", "", "the server's expected `SPIFFE-ID`; required")
	cmd.Flags().StringVar(&message, "message", "hello", "the line to send")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 15*time.Second, "bound on the whole call")
	f.add(cmd)
	_ = cmd.MarkFlagRequired("server-id")
	return cmd
}

// lockedWriter serialises lines from concurrent handshakes.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format, args...)
}
