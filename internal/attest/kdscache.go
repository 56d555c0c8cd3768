package attest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-sev-guest/verify/trust"
)

// DefaultKDSCacheTTL is how long a fetched certificate is served without
// asking the key distribution service again.
const DefaultKDSCacheTTL = 24 * time.Hour

// CachingFetcher puts an on-disk cache in front of a fetcher of AMD key
// distribution service URLs. A fresh entry is served from disk; a stale
// one is refreshed, and served anyway when the refresh fails, so a KDS
// outage does not stop verification of chips already seen.
type CachingFetcher struct {
	// Upstream does the real fetching (trust.DefaultHTTPSGetter() in production).
	Upstream trust.HTTPSGetter
	// Dir holds one file per URL, named by the URL's SHA-256.
	Dir string
	// TTL is how long an entry is fresh; DefaultKDSCacheTTL when zero.
	TTL time.Duration
	// Now replaces the clock (tests).
	Now func() time.Time
	// Logger receives a warning when a stale entry is served.
	Logger *slog.Logger
}

// Get implements trust.HTTPSGetter.
func (c *CachingFetcher) Get(url string) ([]byte, error) {
	now := time.Now()
	if c.Now != nil {
		now = c.Now()
	}
	ttl := c.TTL
	if ttl == 0 {
		ttl = DefaultKDSCacheTTL
	}
	sum := sha256.Sum256([]byte(url))
	path := filepath.Join(c.Dir, hex.EncodeToString(sum[:]))
	cached, cacheErr := os.ReadFile(path)
	if cacheErr == nil {
		if st, err := os.Stat(path); err == nil && now.Sub(st.ModTime()) < ttl {
			return cached, nil
		}
	}
	body, err := c.Upstream.Get(url)
	if err == nil && len(body) > 0 {
		if werr := c.store(path, body, now); werr != nil {
			c.logger().Warn("KDS cache write failed", "url", url, "err", werr)
		}
		return body, nil
	}
	if err == nil {
		err = fmt.Errorf("empty response")
	}
	if cacheErr == nil {
		c.logger().Warn("KDS fetch failed; serving stale cached certificate", "url", url, "err", err)
		return cached, nil
	}
	return nil, fmt.Errorf("fetch %s: %w (no cached copy)", url, err)
}

func (c *CachingFetcher) store(path string, body []byte, now time.Time) error {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, body, 0o600); err != nil {
		return err
	}
	if err := os.Chtimes(tmp, now, now); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (c *CachingFetcher) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}
