package agent

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestInterfaceMTU(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skipf("no loopback interface: %v", err)
	}
	mtu, err := InterfaceMTU(netip.MustParseAddr("127.0.0.1"))
	if err != nil || mtu != lo.MTU {
		t.Errorf("MTU of 127.0.0.1's interface: %d, %v; want lo's %d", mtu, err, lo.MTU)
	}
	if _, err := InterfaceMTU(netip.MustParseAddr("198.51.100.77")); err == nil || !strings.Contains(err.Error(), "no interface holds 198.51.100.77") {
		t.Errorf("address on no interface: %v; want an error naming it", err)
	}
}
