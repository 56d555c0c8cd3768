package authenticode

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/measure/measuretest"
)

// Pinned digests: osslsigncode 2.9 (OpenSSL 3.0) computed the same values
// here ("Calculated message digest" of `osslsigncode verify` after
// `osslsigncode sign -h sha384`); TestAgainstOsslsigncode recomputes them
// whenever osslsigncode is installed.
var pinned = map[string]string{
	"plain":    "7e7dbe3af9e3b542fb91e2abd4b11c886b734537edaefc514896ec4118639b8291034ebee3842c0865f86fd545504869",
	"reversed": "c3ef09b27299d9934ffa9a02e7fdf12cbbf7a9fe3197f2be101cbadaa6adc252ac3a0ad95b1b00977d4cf82ec316a6ab",
	"trailer":  "26003cce39097674911bb97972bd59e488c11b0cf07223a6cc96252784890a4ff11cffd189755af1b3a9d89f82458d89",
}

func images() map[string][]byte {
	plain := measuretest.Kernel("k", 0x3000)
	rev := plain
	rev.ReverseSections = true
	trailer := plain
	trailer.Trailer = measuretest.Fill("trailer", 64)
	return map[string][]byte{"plain": plain.Build(), "reversed": rev.Build(), "trailer": trailer.Build()}
}

// TestAgainstOsslsigncode: an independent Authenticode implementation
// (osslsigncode) signs each synthetic image with SHA-384 and reports the
// digest it calculated; ours must equal it, for the signed image (whose
// checksum, certificate-table entry and appended certificate table are
// excluded) and the unsigned one alike. The section table listed out of
// file order and data after the last section are covered.
func TestAgainstOsslsigncode(t *testing.T) {
	tool, err := exec.LookPath("osslsigncode")
	if err != nil {
		t.Logf("osslsigncode not installed: checking the pinned digests it computed")
	}
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	for name, img := range images() {
		t.Run(name, func(t *testing.T) {
			got, err := Hash(img, sha512.New384)
			if err != nil {
				t.Fatal(err)
			}
			if tool == "" {
				if want := pinned[name]; hex.EncodeToString(got) != want {
					t.Fatalf("digest %x, osslsigncode computed %s", got, want)
				}
				return
			}
			in, out := filepath.Join(dir, name+".efi"), filepath.Join(dir, name+".signed.efi")
			if err := os.WriteFile(in, img, 0o600); err != nil {
				t.Fatal(err)
			}
			if b, err := exec.Command(tool, "sign", "-certs", cert, "-key", key, "-h", "sha384", "-in", in, "-out", out).CombinedOutput(); err != nil {
				t.Fatalf("osslsigncode sign: %v\n%s", err, b)
			}
			// verify fails on the untrusted self-signed certificate but
			// prints the digest it calculated first.
			b, _ := exec.Command(tool, "verify", "-in", out).CombinedOutput()
			m := regexp.MustCompile(`Calculated message digest\s*:\s*([0-9A-F]{96})`).FindSubmatch(b)
			if m == nil {
				t.Fatalf("osslsigncode verify printed no SHA-384 digest:\n%s", b)
			}
			want := strings.ToLower(string(m[1]))
			if hex.EncodeToString(got) != want {
				t.Fatalf("digest of the unsigned image %x, osslsigncode calculated %s", got, want)
			}
			signed, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if len(signed) <= len(img) {
				t.Fatalf("osslsigncode appended no certificate table (%d -> %d bytes)", len(img), len(signed))
			}
			gotSigned, err := Hash(signed, sha512.New384)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(gotSigned) != want {
				t.Fatalf("digest of the signed image %x, want %s: the signature was hashed", gotSigned, want)
			}
			if p := pinned[name]; p != want {
				t.Fatalf("osslsigncode calculated %s, pinned %s", want, p)
			}
			t.Logf("osslsigncode %s: %s", name, want)
		})
	}
}

// What the digest covers: a byte in a section or the headers changes it,
// the checksum does not.
func TestCoverage(t *testing.T) {
	img := images()["plain"]
	base, _ := Hash(img, sha512.New384)
	for _, tc := range []struct {
		name    string
		off     int
		changes bool
	}{{"text", 0x2000, true}, {"setup", 0x300, true}, {"machine", 0x44, true}, {"checksum", 0x40 + 4 + 20 + 64, false}} {
		c := append([]byte(nil), img...)
		c[tc.off] ^= 0xff
		d, err := Hash(c, sha512.New384)
		if err != nil {
			t.Fatal(err)
		}
		if (hex.EncodeToString(d) != hex.EncodeToString(base)) != tc.changes {
			t.Errorf("%s byte: digest changed = %v, want %v", tc.name, !tc.changes, tc.changes)
		}
	}
}

func TestRefusals(t *testing.T) {
	img := images()["plain"]
	opt := 0x40 + 4 + 20
	patch := func(f func([]byte)) []byte { c := append([]byte(nil), img...); f(c); return c }
	for _, tc := range []struct {
		name string
		img  []byte
		want string
	}{
		{"tiny", []byte("MZ"), "too small"},
		{"no PE signature", patch(func(b []byte) { b[0x40] = 'X' }), "no \"PE\\0\\0\" signature"},
		{"lfanew past the end", patch(func(b []byte) { b[0x3c] = 0xff; b[0x3d] = 0xff; b[0x3e] = 0xff }), "no \"PE\\0\\0\" signature"},
		{"bad magic", patch(func(b []byte) { b[opt] = 0x99 }), "magic 0x299"},
		{"section past the end", patch(func(b []byte) { b[opt+240+40+16+2] = 0x10 }), "runs past"},
		{"too many data directories", patch(func(b []byte) { b[opt+108] = 200 }), "data directories do not fit"},
		{"certificate table larger than the tail", func() []byte {
			c := append([]byte(nil), images()["trailer"]...)
			c[opt+112+8*4+4+2] = 1
			return c
		}(), "certificate table does not fit"},
		{"too many sections", patch(func(b []byte) { b[0x40+4+2] = 200 }), "200 sections"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Hash(tc.img, sha512.New384)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("digest %x, error %v; want an error containing %q", d, err, tc.want)
			}
		})
	}
}

func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "confmesh authenticode test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: mustPKCS8(t, k)}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func mustPKCS8(t *testing.T, k *rsa.PrivateKey) []byte {
	b, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
