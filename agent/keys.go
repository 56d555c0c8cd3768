package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/confmesh/confmesh/internal/wg"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Key files in the state directory, all 0600.
const (
	wireGuardKeyFile = "wireguard.key"
	svidKeyFile      = "svid.key"
)

// loadOrCreateWireGuardKey keeps the node's WireGuard private key (base64,
// as wg(8) writes it) in dir, mode 0600.
func loadOrCreateWireGuardKey(dir string) (wgtypes.Key, error) {
	path := filepath.Join(dir, wireGuardKeyFile)
	data, err := os.ReadFile(path)
	if err == nil {
		k, err := wgtypes.ParseKey(strings.TrimSpace(string(data)))
		if err != nil {
			return wgtypes.Key{}, fmt.Errorf("%s: %w", path, err)
		}
		return k, checkMode(path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return wgtypes.Key{}, fmt.Errorf("read WireGuard key: %w", err)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, err
	}
	return k, saveWireGuardKey(dir, k)
}

func saveWireGuardKey(dir string, k wgtypes.Key) error {
	return writeFileAtomic(filepath.Join(dir, wireGuardKeyFile), []byte(k.String()+"\n"), 0o600)
}

// loadOrCreateSVIDKey keeps the node's identity key (ECDSA P-256, PKCS#8 PEM).
func loadOrCreateSVIDKey(dir string) (crypto.Signer, error) {
	path := filepath.Join(dir, svidKeyFile)
	data, err := os.ReadFile(path)
	if err == nil {
		b, _ := pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("%s: no PEM block", path)
		}
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: not a signing key", path)
		}
		return s, checkMode(path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read SVID key: %w", err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return k, writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// checkMode refuses a private key readable by others.
func checkMode(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s is mode %v; a private key must be 0600", path, st.Mode().Perm())
	}
	return nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// RemoveDevice deletes the node's WireGuard device (stopping a userspace
// datapath): `confmesh agent cleanup`.
func RemoveDevice(name, pidFile string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return wg.Remove(ctx, name, pidFile)
}
