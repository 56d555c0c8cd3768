package attest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"
	tdxtrust "github.com/google/go-tdx-guest/verify/trust"
)

// Collateral is Intel's DCAP quote verification collateral in the common
// JSON exchange form of sgx_ql_qve_collateral_t: PEM issuer chains, CRLs as
// hex DER, the TCB info and QE identity JSON bodies as strings (exactly the
// signed bytes) and their signatures as hex.
type Collateral struct {
	PCKCRLIssuerChain     string `json:"pck_crl_issuer_chain"`
	RootCACRL             string `json:"root_ca_crl"`
	PCKCRL                string `json:"pck_crl"`
	TCBInfoIssuerChain    string `json:"tcb_info_issuer_chain"`
	TCBInfo               string `json:"tcb_info"`
	TCBInfoSignature      string `json:"tcb_info_signature"`
	QEIdentityIssuerChain string `json:"qe_identity_issuer_chain"`
	QEIdentity            string `json:"qe_identity"`
	QEIdentitySignature   string `json:"qe_identity_signature"`
}

// MaxCollateralSize bounds a collateral file.
const MaxCollateralSize = 1 << 20

// LoadCollateral reads a collateral JSON file.
func LoadCollateral(path string) (*TDXCollateral, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read collateral: %w", err)
	}
	c, err := ParseCollateral(data)
	if err != nil {
		return nil, fmt.Errorf("collateral %s: %w", path, err)
	}
	return c.Source(), nil
}

// ParseCollateral decodes and checks the shape of collateral JSON (its
// signatures are checked when a quote is verified with it).
func ParseCollateral(data []byte) (*Collateral, error) {
	if len(data) > MaxCollateralSize {
		return nil, fmt.Errorf("%d bytes exceeds the %d-byte limit", len(data), MaxCollateralSize)
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	var c Collateral
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	for _, f := range []struct{ name, v string }{
		{"tcb_info_issuer_chain", c.TCBInfoIssuerChain}, {"tcb_info", c.TCBInfo}, {"tcb_info_signature", c.TCBInfoSignature},
		{"qe_identity_issuer_chain", c.QEIdentityIssuerChain}, {"qe_identity", c.QEIdentity}, {"qe_identity_signature", c.QEIdentitySignature},
	} {
		if strings.TrimSpace(f.v) == "" {
			return nil, fmt.Errorf("%s: missing", f.name)
		}
	}
	for _, f := range []struct{ name, v string }{
		{"tcb_info_signature", c.TCBInfoSignature}, {"qe_identity_signature", c.QEIdentitySignature},
		{"pck_crl", c.PCKCRL}, {"root_ca_crl", c.RootCACRL},
	} {
		if _, err := hex.DecodeString(f.v); err != nil {
			return nil, fmt.Errorf("%s: not hex: %w", f.name, err)
		}
	}
	for _, f := range []struct{ name, v string }{{"tcb_info", c.TCBInfo}, {"qe_identity", c.QEIdentity}} {
		if !json.Valid([]byte(f.v)) {
			return nil, fmt.Errorf("%s: not a JSON object", f.name)
		}
	}
	if (c.PCKCRL == "") != (c.RootCACRL == "") || (c.PCKCRL != "" && c.PCKCRLIssuerChain == "") {
		return nil, fmt.Errorf("pck_crl, pck_crl_issuer_chain and root_ca_crl: give all three (revocation is checked) or none")
	}
	return &c, nil
}

// Source returns the collateral as a verifier collateral source; CRLs are
// checked when the collateral carries them.
func (c *Collateral) Source() *TDXCollateral {
	return &TDXCollateral{Getter: &collateralGetter{c: c}, CheckRevocations: c.PCKCRL != ""}
}

// collateralGetter answers go-tdx-guest's PCS requests from a Collateral,
// as PCS would: issuer chains in the response headers, bodies as served.
type collateralGetter struct{ c *Collateral }

func (g *collateralGetter) Get(u string) (map[string][]string, []byte, error) {
	c := g.c
	hdr := func(name, chain string) map[string][]string {
		return map[string][]string{name: {url.QueryEscape(chain)}}
	}
	switch {
	case strings.Contains(u, "/tcb?fmspc="):
		body := fmt.Sprintf(`{"tcbInfo":%s,"signature":"%s"}`, c.TCBInfo, c.TCBInfoSignature)
		return hdr(pcs.TcbInfoIssuerChainPhrase, c.TCBInfoIssuerChain), []byte(body), nil
	case strings.HasSuffix(u, "/qe/identity"):
		body := fmt.Sprintf(`{"enclaveIdentity":%s,"signature":"%s"}`, c.QEIdentity, c.QEIdentitySignature)
		return hdr(pcs.SgxQeIdentityIssuerChainPhrase, c.QEIdentityIssuerChain), []byte(body), nil
	case strings.Contains(u, "/pckcrl?"):
		if c.PCKCRL == "" {
			return nil, nil, fmt.Errorf("collateral carries no pck_crl")
		}
		der, _ := hex.DecodeString(c.PCKCRL)
		return hdr(pcs.SgxPckCrlIssuerChainPhrase, c.PCKCRLIssuerChain), der, nil
	default:
		// The root CA CRL, at the distribution point the root names.
		if c.RootCACRL == "" {
			return nil, nil, fmt.Errorf("collateral carries no root_ca_crl")
		}
		der, _ := hex.DecodeString(c.RootCACRL)
		return nil, der, nil
	}
}

// intelPCSBase is the prefix go-tdx-guest's PCS URLs start with.
const intelPCSBase = "https://api.trustedservices.intel.com"

// DefaultPCSCacheTTL is how long fetched collateral is served without
// asking PCS again. Intel's terms require caching PCS responses.
const DefaultPCSCacheTTL = 24 * time.Hour

// PCSGetter fetches collateral from Intel PCS or a PCCS, caching every
// response on disk and serving a stale copy when the service fails, like
// CachingFetcher does for AMD's KDS.
type PCSGetter struct {
	// BaseURL replaces Intel's PCS base (scheme and host, optionally a
	// path prefix) for a PCCS; empty keeps Intel PCS.
	BaseURL string
	// Upstream does the fetching (tdxtrust.DefaultHTTPSGetter() in production).
	Upstream tdxtrust.HTTPSGetter
	// Dir holds one file per URL, named by the URL's SHA-256; empty disables the cache.
	Dir string
	// TTL is how long an entry is fresh; DefaultPCSCacheTTL when zero.
	TTL time.Duration
	// Now replaces the clock (tests).
	Now func() time.Time
	// Logger receives a warning when a stale entry is served.
	Logger *slog.Logger
}

type cachedResponse struct {
	Header map[string][]string `json:"header"`
	Body   []byte              `json:"body"`
}

// Get implements go-tdx-guest's trust.HTTPSGetter.
func (g *PCSGetter) Get(u string) (map[string][]string, []byte, error) {
	if g.BaseURL != "" && strings.HasPrefix(u, intelPCSBase) {
		u = strings.TrimRight(g.BaseURL, "/") + strings.TrimPrefix(u, intelPCSBase)
	}
	now := time.Now()
	if g.Now != nil {
		now = g.Now()
	}
	ttl := g.TTL
	if ttl == 0 {
		ttl = DefaultPCSCacheTTL
	}
	var path string
	var cached *cachedResponse
	if g.Dir != "" {
		sum := sha256.Sum256([]byte(u))
		path = filepath.Join(g.Dir, hex.EncodeToString(sum[:]))
		if data, err := os.ReadFile(path); err == nil {
			var c cachedResponse
			if json.Unmarshal(data, &c) == nil {
				cached = &c
				if st, err := os.Stat(path); err == nil && now.Sub(st.ModTime()) < ttl {
					return c.Header, c.Body, nil
				}
			}
		}
	}
	hdr, body, err := tdxtrust.GetWith(context.Background(), g.Upstream, u)
	if err == nil && len(body) > 0 {
		if path != "" {
			if werr := g.store(path, &cachedResponse{Header: hdr, Body: body}, now); werr != nil {
				g.logger().Warn("PCS cache write failed", "url", u, "err", werr)
			}
		}
		return hdr, body, nil
	}
	if err == nil {
		err = fmt.Errorf("empty response")
	}
	if cached != nil {
		g.logger().Warn("PCS fetch failed; serving stale cached collateral", "url", u, "err", err)
		return cached.Header, cached.Body, nil
	}
	return nil, nil, fmt.Errorf("fetch %s: %w (no cached copy)", u, err)
}

func (g *PCSGetter) store(path string, c *cachedResponse, now time.Time) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(g.Dir, 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Chtimes(tmp, now, now); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (g *PCSGetter) logger() *slog.Logger {
	if g.Logger != nil {
		return g.Logger
	}
	return slog.Default()
}
