package claims_test

import (
	"context"
	"fmt"
	"log"
	"net/http"

	"github.com/confmesh/confmesh/pkg/claims"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// A client that talks only to the ledger service running on a node with
// the approved image.
func ExampleAuthorizeID() {
	ctx := context.Background()
	// SPIFFE_ENDPOINT_SOCKET=unix:///run/spiffe/workload.sock in the pod.
	source, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()

	ledger := spiffeid.RequireFromString("spiffe://cluster.example/ns/payments/sa/ledger")
	image, _ := claims.ParseMeasurement("5f3c...") // the approved launch measurement, 96 hex digits
	conn, err := spiffetls.DialWithMode(ctx, "tcp", "ledger.payments:8443",
		spiffetls.MTLSClientWithSource(claims.AuthorizeID(ledger, image), source))
	if err != nil {
		log.Fatal(err) // includes "measurement ... is not an accepted one"
	}
	defer conn.Close()
}

// An HTTPS server that accepts any workload of the trust domain on a node
// running one of two images (a rollout), and logs where its caller runs.
func ExampleAuthorize() {
	ctx := context.Background()
	source, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()

	oldImage, _ := claims.ParseMeasurement("5f3c...")
	newImage, _ := claims.ParseMeasurement("9a41...")
	auth := claims.Authorize(spiffeid.MatchMemberOf(spiffeid.RequireTrustDomainFromString("cluster.example")),
		claims.Requirement{Measurements: [][]byte{oldImage, newImage}, TEEs: []string{claims.TEESevSnp}})
	srv := &http.Server{
		Addr:      ":8443",
		TLSConfig: tlsconfig.MTLSServerConfig(source, source, auth),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := claims.FromConnectionState(*r.TLS)
			if err != nil {
				http.Error(w, err.Error(), http.StatusForbidden)
				return
			}
			fmt.Fprintf(w, "hello from node %s, image %s\n", c.NodeName(), c.MeasurementHex())
		}),
	}
	log.Fatal(srv.ListenAndServeTLS("", ""))
}

// A JWT-SVID validated with go-spiffe, then its attestation claim read.
func ExampleFromJWTClaims() {
	ctx := context.Background()
	client, err := workloadapi.New(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		log.Fatal(err)
	}
	var token string // from the Authorization header
	svid, err := jwtsvid.ParseAndValidate(token, bundles, []string{"ledger"})
	if err != nil {
		log.Fatal(err)
	}
	c, err := claims.FromJWTClaims(svid.Claims)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(svid.ID, "runs on", c.NodeID, "with measurement", c.MeasurementHex())
}
