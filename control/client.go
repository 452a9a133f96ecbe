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

// Registration is what Register asks for: an agent's certificate, or
// (Role RegisterProcessServer, with Hosts and URL) a process server's.
type Registration struct {
	Name  string
	Role  string
	Hosts []string
	URL   string
}

// Issued is what a registration gets: the client certificate, for a
// process server its data port's certificate, the key of both (generated
// here, never sent) and the site's CA, all PEM.
type Issued struct {
	CertPEM       []byte
	ServerCertPEM []byte
	KeyPEM        []byte
	CAPEM         []byte
}

// Identity is the client identity of is.
func (is Issued) Identity() pki.Identity {
	return pki.Identity{CertPEM: is.CertPEM, KeyPEM: is.KeyPEM, CAPEM: is.CAPEM}
}

// Register asks the configuration server at baseURL (https://HOST:PORT)
// for the certificates of reg. The key is generated here and never sent.
// Without caPEM the server's certificate cannot be checked before
// registering (there is nothing to check it against yet); the passphrase
// then authenticates the server: its reply must carry a proof only a
// holder of the passphrase's key can make, and the CA it returns is the
// one trusted from then on.
func Register(ctx context.Context, baseURL string, reg Registration, passphrase string, caPEM []byte) (Issued, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS13}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return Issued{}, errors.New("the CA file has no PEM certificate")
		}
		tlsConf.RootCAs = pool
	} else {
		tlsConf.InsecureSkipVerify = true // checked by the passphrase proof below
	}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tlsConf}}
	var params RegisterParams
	if err := Call(ctx, client, http.MethodGet, baseURL+"/v1/register", nil, &params); err != nil {
		return Issued{}, err
	}
	key, err := DeriveKey(passphrase, params.KDF)
	if err != nil {
		return Issued{}, err
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Issued{}, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: reg.Name}}, priv)
	if err != nil {
		return Issued{}, err
	}
	req := RegisterRequest{Name: reg.Name, CSR: csr, Role: reg.Role, Hosts: reg.Hosts, URL: reg.URL}
	req.Proof = RequestProof(key, req)
	var reply RegisterReply
	if err := Call(ctx, client, http.MethodPost, baseURL+"/v1/register", req, &reply); err != nil {
		return Issued{}, err
	}
	certBlock, _ := pem.Decode(reply.CertPEM)
	caBlock, _ := pem.Decode(reply.CAPEM)
	var serverDER []byte
	if b, _ := pem.Decode(reply.ServerCertPEM); b != nil {
		serverDER = b.Bytes
	}
	if certBlock == nil || caBlock == nil || !hmac.Equal(reply.Proof, ReplyProof(key, certBlock.Bytes, serverDER, caBlock.Bytes)) {
		return Issued{}, ErrServerProof
	}
	for _, der := range [][]byte{certBlock.Bytes, serverDER} {
		if der == nil {
			continue
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return Issued{}, fmt.Errorf("an issued certificate: %w", err)
		}
		if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&priv.PublicKey) {
			return Issued{}, errors.New("an issued certificate is not for the key sent")
		}
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return Issued{}, err
	}
	return Issued{CertPEM: reply.CertPEM, ServerCertPEM: reply.ServerCertPEM, CAPEM: reply.CAPEM,
		KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})}, nil
}
