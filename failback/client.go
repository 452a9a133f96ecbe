package failback

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// Client is the recovery site's client of a master target.
type Client struct {
	URL  string // https://HOST:PORT
	HTTP *http.Client
}

// Volume returns the primary volume id as the master target sees it.
func (c *Client) Volume(ctx context.Context, id string) (Volume, error) {
	var v Volume
	err := c.call(ctx, http.MethodGet, "/v1/master/volumes/"+id, nil, &v)
	return v, err
}

// Adopt hands the primary volume id back to its agent.
func (c *Client) Adopt(ctx context.Context, id string, req AdoptRequest) (Volume, error) {
	var v Volume
	err := c.call(ctx, http.MethodPost, "/v1/master/volumes/"+id+"/adopt", req, &v)
	return v, err
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	if err := pipeline.Call(ctx, c.HTTP, method, strings.TrimSuffix(c.URL, "/")+path, in, out); err != nil {
		return fmt.Errorf("master target %s: %w", c.URL, err)
	}
	return nil
}

// Hashes returns HashSize bytes per block of each range of req (a binary
// answer, of any length: not through pipeline.Call).
func (c *Client) Hashes(ctx context.Context, id string, req HashRequest) ([]byte, error) {
	if req.Block == 0 {
		req.Block = HashBlock
	}
	var want int64
	for _, r := range req.Ranges {
		want += blocks(r.Len, req.Block) * HashSize
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.URL, "/")+"/v1/master/volumes/"+id+"/hashes", bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTP.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("master target %s: %w", c.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("master target %s: %w", c.URL, pipeline.AnswerError(resp))
	}
	out, err := io.ReadAll(io.LimitReader(resp.Body, want+1))
	if err != nil || int64(len(out)) != want {
		return nil, fmt.Errorf("master target %s answered %d bytes of hashes, want %d (%v; it failed while reading its disk? see its log)", c.URL, len(out), want, err)
	}
	return out, nil
}

// SiteTLS returns the recovery site's client TLS configuration for
// reverse replication: the identity SiteName, issued by the site's CA in
// dataDir the first time (kept in DATA_DIR/pki/reverse), trusting master
// targets whose server certificates that CA issued.
func SiteTLS(dataDir string) (*tls.Config, error) {
	dir := filepath.Join(pki.Paths(dataDir).Dir, "reverse")
	cert, key, ca := filepath.Join(dir, SiteName+".crt"), filepath.Join(dir, SiteName+".key"), filepath.Join(dir, "ca.crt")
	if _, err := os.Stat(key); errors.Is(err, fs.ErrNotExist) {
		authority, err := pki.Load(dataDir)
		if err != nil {
			return nil, fmt.Errorf("the site's identity for reverse replication: %w", err)
		}
		id, err := authority.Issue(SiteName, pki.RoleAgent, nil, pki.DefaultValidity)
		if err != nil {
			return nil, fmt.Errorf("the site's identity for reverse replication: %w", err)
		}
		if err := id.Write(dir, SiteName); err != nil {
			return nil, err
		}
	}
	return pki.ClientTLS(cert, key, ca)
}
