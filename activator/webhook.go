package activator

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"syscall"
	"time"
)

// Webhook URLs come from API clients, and the activator calls them from
// inside the operator's network. Unless Config.AllowPrivateWebhooks is set,
// a webhook may only reach public addresses: otherwise any key could make
// the activator POST to the cloud metadata service, to an admin port on
// localhost or to anything else on the private network (SSRF).
//
// The address is checked where the connection is made, in the dialer's
// Control hook, after DNS resolution: a name that resolves to a public
// address when the job is submitted and to an internal one when it is
// delivered (DNS rebinding), a redirect to an internal address, and IP
// spellings that only the resolver understands are all caught there. A
// literal internal IP is also refused at submission, so the client hears
// about it at once rather than finding no webhook call later.

// errWebhookInternal is a webhook whose address is not public. It is
// permanent: retrying cannot help.
var errWebhookInternal = errors.New("the webhook's address is not a public one")

// nonPublic are ranges that net/netip has no predicate for.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),     // "this network"
	netip.MustParsePrefix("100.64.0.0/10"), // carrier-grade NAT, and Alibaba Cloud's metadata service
	netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"), // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),   // reserved, and the broadcast address
}

// nat64 is the well-known NAT64 prefix: its addresses reach the IPv4
// address in their last four bytes.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// internalAddr says why ip is not a public address, or "" if it is.
func internalAddr(ip netip.Addr) string {
	ip = ip.Unmap().WithZone("")
	if nat64.Contains(ip) {
		b := ip.As16()
		ip = netip.AddrFrom4([4]byte(b[12:]))
	}
	switch {
	case !ip.IsValid():
		return "not an IP address"
	case ip.IsUnspecified():
		return "unspecified"
	case ip.IsLoopback():
		return "loopback"
	case ip.IsPrivate():
		return "private"
	case ip.IsLinkLocalUnicast():
		return "link-local" // 169.254.169.254, the cloud metadata service, among them
	case ip.IsMulticast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast():
		return "multicast"
	}
	for _, p := range nonPublic {
		if p.Contains(ip) {
			return "reserved"
		}
	}
	return ""
}

// refuseInternal is a net.Dialer Control hook: it runs for every address
// the dialer is about to connect to, after resolution.
func refuseInternal(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot check address %q: %v", errWebhookInternal, address, err)
	}
	if why := internalAddr(ap.Addr()); why != "" {
		return fmt.Errorf("%w: %s is %s", errWebhookInternal, ap.Addr(), why)
	}
	return nil
}

// webhookClient is the client that calls webhooks: base (or a default one
// with a 10 s timeout) dialling only public addresses unless allowPrivate.
// A base client with a Transport other than *http.Transport is used as it
// is: its RoundTripper decides where it connects.
func webhookClient(base *http.Client, allowPrivate bool) *http.Client {
	if base == nil {
		base = &http.Client{Timeout: 10 * time.Second}
	}
	if allowPrivate {
		return base
	}
	var t *http.Transport
	switch rt := base.Transport.(type) {
	case nil:
		t = http.DefaultTransport.(*http.Transport).Clone()
	case *http.Transport:
		t = rt.Clone()
	default:
		return base
	}
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Control: refuseInternal}
	t.DialContext = d.DialContext
	// A custom TLS dialer would bypass the check; the transport's own TLS
	// runs over DialContext. (The deprecated Dial loses to DialContext.)
	t.DialTLSContext, t.DialTLS = nil, nil
	// Through a proxy, the connection that is checked is the one to the
	// proxy, which then reaches whatever the URL names: dial directly.
	t.Proxy = nil
	c := *base
	c.Transport = t
	return &c
}

// checkWebhook validates a webhook URL when a job is submitted.
func checkWebhook(hook string, allowPrivate bool) *apiError {
	u, err := url.Parse(hook)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errInvalid("webhook", "webhook must be an absolute http or https URL, got %q", hook)
	}
	if allowPrivate {
		return nil
	}
	// Names are checked when they are dialled; only literal addresses
	// can be judged now.
	if ip, err := netip.ParseAddr(u.Hostname()); err == nil {
		if why := internalAddr(ip); why != "" {
			return errInvalid("webhook", "webhook %q points to a %s address; webhooks must reach a public address", hook, why)
		}
	}
	return nil
}
