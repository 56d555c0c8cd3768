package agent

import (
	"context"
	"math/rand/v2"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// kickDelays are when kickHandshakes looks again; each gets up to 400 ms of
// random jitter so the two ends of a peering never re-initiate in step.
var kickDelays = []time.Duration{300 * time.Millisecond, time.Second, 2 * time.Second}

// kickHandshakes shortens the gap after a WireGuard key switch. When both
// ends of a peering start a handshake at the same instant (each just
// learned, or just switched to, a new key), each answers the other's
// initiation, neither completes, and wireguard-go waits REKEY_TIMEOUT (5 s)
// before it tries again. For every key in keys that still has no handshake
// since the switch, the peer is removed and added again: fresh handshake
// state, so its keepalive initiates at once, out of step with the other
// side. Bounded: len(kickDelays) rounds, then it leaves it to WireGuard.
func (a *Agent) kickHandshakes(ctx context.Context, keys []wgtypes.Key, since time.Time) {
	if len(keys) == 0 {
		return
	}
	go func() {
		pending := map[wgtypes.Key]bool{}
		for _, k := range keys {
			pending[k] = true
		}
		for _, d := range kickDelays {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d + time.Duration(rand.Int64N(int64(400*time.Millisecond)))):
			}
			if !a.rekick(pending, since) {
				return
			}
		}
	}()
}

// rekick re-adds the pending peers that have not completed a handshake
// since the switch; it reports whether any are still pending.
func (a *Agent) rekick(pending map[wgtypes.Key]bool, since time.Time) bool {
	a.reconcileMu.Lock()
	defer a.reconcileMu.Unlock()
	dev := a.device()
	if dev == nil {
		return false
	}
	st, err := dev.State()
	if err != nil {
		return false
	}
	var changes []wgtypes.PeerConfig
	for _, p := range st.Peers {
		if !pending[p.PublicKey] {
			continue
		}
		if p.LastHandshakeTime.After(since) {
			delete(pending, p.PublicKey)
			continue
		}
		keepalive := KeepaliveInterval
		re := wgtypes.PeerConfig{PublicKey: p.PublicKey, Endpoint: p.Endpoint, ReplaceAllowedIPs: true,
			AllowedIPs: p.AllowedIPs, PersistentKeepaliveInterval: &keepalive}
		changes = append(changes, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true}, re)
	}
	// Keys no longer on the device were removed by a reconcile: forget them.
	for k := range pending {
		found := false
		for _, p := range st.Peers {
			found = found || p.PublicKey == k
		}
		if !found {
			delete(pending, k)
		}
	}
	if len(changes) > 0 {
		if err := dev.ApplyPeers(changes); err != nil {
			a.log.Warn("re-initiate handshakes", "err", err)
			return false
		}
		a.log.Info("re-initiated handshakes that had not completed after a key change", "peers", len(changes)/2)
	}
	return len(pending) > 0
}

// addedKeys are the peers a plan adds (not updates or removes).
func addedKeys(plan Plan) []wgtypes.Key {
	var out []wgtypes.Key
	for _, c := range plan.Changes {
		if !c.Remove && !c.UpdateOnly {
			out = append(out, c.PublicKey)
		}
	}
	return out
}
