package control

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"lifeboat/pipeline/pki"
)

// CallError is an error answer of the API.
type CallError struct {
	Status  int
	Message string
}

func (e *CallError) Error() string { return e.Message }

// Call sends in (JSON, if not nil) and decodes a 200 answer into out (if
// not nil); another answer is a *CallError with the server's message.
func Call(ctx context.Context, client *http.Client, method, url string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e APIError
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return &CallError{Status: resp.StatusCode, Message: fmt.Sprintf("configuration server: %s (%s)", msg, resp.Status)}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("configuration server answer: %w", err)
	}
	return nil
}

// ErrServerProof: the server did not prove it knows the passphrase.
var ErrServerProof = errors.New("the server did not prove it knows the registration passphrase: " +
	"it is not the site's configuration server, or someone is in between")

// Register asks the configuration server at baseURL (https://HOST:PORT)
// for an agent certificate for name. The key is generated here and never
// sent. Without caPEM the server's certificate cannot be checked before
// registering (there is nothing to check it against yet); the passphrase
// then authenticates the server: its reply must carry a proof only a
// holder of the passphrase's key can make, and the CA it returns is the
// one the agent trusts from then on.
func Register(ctx context.Context, baseURL, name, passphrase string, caPEM []byte) (pki.Identity, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS13}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return pki.Identity{}, errors.New("the CA file has no PEM certificate")
		}
		tlsConf.RootCAs = pool
	} else {
		tlsConf.InsecureSkipVerify = true // checked by the passphrase proof below
	}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tlsConf}}
	var params RegisterParams
	if err := Call(ctx, client, http.MethodGet, baseURL+"/v1/register", nil, &params); err != nil {
		return pki.Identity{}, err
	}
	key, err := DeriveKey(passphrase, params.KDF)
	if err != nil {
		return pki.Identity{}, err
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return pki.Identity{}, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, priv)
	if err != nil {
		return pki.Identity{}, err
	}
	var reply RegisterReply
	req := RegisterRequest{Name: name, CSR: csr, Proof: AgentProof(key, name, csr)}
	if err := Call(ctx, client, http.MethodPost, baseURL+"/v1/register", req, &reply); err != nil {
		return pki.Identity{}, err
	}
	certBlock, _ := pem.Decode(reply.CertPEM)
	caBlock, _ := pem.Decode(reply.CAPEM)
	if certBlock == nil || caBlock == nil || !hmac.Equal(reply.Proof, ServerProof(key, certBlock.Bytes, caBlock.Bytes)) {
		return pki.Identity{}, ErrServerProof
	}
	cert, err := x509.ParseCertificate(certBlock.Bytes)
	if err != nil {
		return pki.Identity{}, fmt.Errorf("the issued certificate: %w", err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&priv.PublicKey) {
		return pki.Identity{}, errors.New("the issued certificate is not for the key this agent sent")
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return pki.Identity{}, err
	}
	return pki.Identity{CertPEM: reply.CertPEM, CAPEM: reply.CAPEM,
		KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})}, nil
}
