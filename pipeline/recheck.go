package pipeline

import (
	"crypto/tls"
	"net/http"

	"lifeboat/pipeline/pki"
)

// recheckPeer checks the client again on every request with verify, the
// TLS configuration's VerifyConnection (pki.ServerTLS refuses revoked
// certificates there). The handshake check alone would let a client that
// was revoked after it connected go on over its keep-alive connection. A
// refused request gets 403 with the reason and the connection is closed;
// the refusal is logged with the holder's name.
func (s *Server) recheckPeer(next http.Handler, verify func(tls.ConnectionState) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil {
			if err := verify(*r.TLS); err != nil {
				name, role, _ := pki.Peer(*r.TLS)
				s.logger().Warn("request refused: the client's certificate is no longer accepted",
					"peer", name, "role", role, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
				w.Header().Set("Connection", "close")
				httpError(w, http.StatusForbidden, err)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
