package workload_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/pkg/claims"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// echoServer serves spiffetls mTLS on loopback with srv's SVID, authorizing
// clients with auth; it answers each line with the client's ID and the
// measurement the server read from the client's claims.
func echoServer(t *testing.T, srv *workloadapi.X509Source, auth tlsconfig.Authorizer) (addr string, serverErrs chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	lis, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0", spiffetls.MTLSServerWithSource(auth, srv))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); lis.Close() })
	errs := make(chan error, 16)
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				line, err := bufio.NewReader(conn).ReadString('\n')
				if err != nil {
					errs <- err
					return
				}
				cs := conn.(interface{ ConnectionState() tls.ConnectionState }).ConnectionState()
				id, err := spiffetls.PeerIDFromConnectionState(cs)
				if err != nil {
					errs <- err
					return
				}
				cl, err := claims.FromConnectionState(cs)
				if err != nil {
					errs <- err
					return
				}
				fmt.Fprintf(conn, "%s from %s on %s (%s)\n", strings.TrimSpace(line), id, cl.NodeName(), cl.MeasurementHex()[:8])
			}()
		}
	}()
	return lis.Addr().String(), errs
}

// exchange dials addr with cli's SVID, authorizing the server with auth,
// sends a line and returns the answer.
func exchange(addr string, cli *workloadapi.X509Source, auth tlsconfig.Authorizer) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := spiffetls.DialWithMode(ctx, "tcp", addr, spiffetls.MTLSClientWithSource(auth, cli))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(conn, "hello"); err != nil {
		return "", err
	}
	return bufio.NewReader(conn).ReadString('\n')
}

// mtlsExchange: web (srcA, node A, goodMeas) calls api (srcB, node B,
// altMeas).
func mtlsExchange(t *testing.T, srcA, srcB *workloadapi.X509Source) {
	// The server accepts web on a node with goodMeas.
	addr, _ := echoServer(t, srcB, claims.AuthorizeID(webID, goodMeas))

	// Right ID and measurement: accepted both ways.
	got, err := exchange(addr, srcA, claims.AuthorizeID(apiID, altMeas))
	if err != nil {
		t.Fatalf("mTLS with the right measurement: %v", err)
	}
	if want := fmt.Sprintf("hello from %s on node-a (%x)\n", webID, goodMeas[:4]); got != want {
		t.Fatalf("answer %q, want %q", got, want)
	}
	// A rollout list containing it is fine too.
	if _, err := exchange(addr, srcA, claims.Authorize(spiffeid.MatchID(apiID), claims.Requirement{Measurements: [][]byte{goodMeas, altMeas}, TEEs: []string{claims.TEESimSnp}})); err != nil {
		t.Fatalf("mTLS with a measurement list: %v", err)
	}

	// The client requires another measurement of the server: refused.
	_, err = exchange(addr, srcA, claims.AuthorizeID(apiID, goodMeas))
	if err == nil || !strings.Contains(err.Error(), "measurement "+fmt.Sprintf("%x", altMeas)+" of node spiffe://cluster.test/confmesh/node/node-b is not an accepted one") {
		t.Fatalf("client requiring another measurement: err = %v", err)
	}
	// Right measurement, wrong ID: refused.
	if _, err = exchange(addr, srcA, claims.AuthorizeID(webID, altMeas)); err == nil {
		t.Fatal("client accepted a server with another ID")
	}
	// Another TEE type required: refused.
	if _, err = exchange(addr, srcA, claims.Authorize(spiffeid.MatchID(apiID), claims.Requirement{Measurements: [][]byte{altMeas}, TEEs: []string{claims.TEESevSnp}})); err == nil || !strings.Contains(err.Error(), "TEE") {
		t.Fatalf("client requiring real SEV-SNP: err = %v", err)
	}
	// No measurement listed: refuses everything.
	if _, err = exchange(addr, srcA, claims.AuthorizeID(apiID)); err == nil || !strings.Contains(err.Error(), "accepts no peer") {
		t.Fatalf("empty requirement: err = %v", err)
	}

	// The server requires another measurement of the client: the client's
	// connection fails (TLS 1.3 reports it on the first read).
	addr2, serverErrs := echoServer(t, srcB, claims.AuthorizeID(webID, altMeas))
	if got, err := exchange(addr2, srcA, claims.AuthorizeID(apiID, altMeas)); err == nil {
		t.Fatalf("server requiring another client measurement answered %q", got)
	}
	select {
	case err := <-serverErrs:
		if !strings.Contains(err.Error(), "not an accepted one") {
			t.Fatalf("server error %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server saw no refusal")
	}

	// Sanity: the client's own view of the server's claims.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := spiffetls.DialWithMode(ctx, "tcp", addr, spiffetls.MTLSClientWithSource(claims.AuthorizeID(apiID, altMeas), srcA))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl, err := claims.FromConnectionState(conn.(interface{ ConnectionState() tls.ConnectionState }).ConnectionState())
	if err != nil || !bytes.Equal(cl.Measurement, altMeas) || cl.NodeName() != "node-b" {
		t.Fatalf("server claims %+v, %v", cl, err)
	}
	var _ net.Conn = conn
}
