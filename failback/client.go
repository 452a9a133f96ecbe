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
	"lifeboat/targets"
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

// Hashes returns HashSize bytes per block of each range of req.
func (c *Client) Hashes(ctx context.Context, id string, req HashRequest) ([]byte, error) {
	if req.Block == 0 {
		req.Block = HashBlock
	}
	var want int64
	for _, r := range req.Ranges {
		want += blocks(r.Len, req.Block) * HashSize
	}
	var out []byte
	if err := c.call(ctx, http.MethodPost, "/v1/master/volumes/"+id+"/hashes", req, &out); err != nil {
		return nil, err
	}
	if int64(len(out)) != want {
		return nil, fmt.Errorf("master target %s answered %d bytes of hashes, want %d (it failed while reading its disk; see its log)", c.URL, len(out), want)
	}
	return out, nil
}

// Adopt hands the primary volume id back to its agent.
func (c *Client) Adopt(ctx context.Context, id string, req AdoptRequest) (Volume, error) {
	var v Volume
	err := c.call(ctx, http.MethodPost, "/v1/master/volumes/"+id+"/adopt", req, &v)
	return v, err
}

// call sends in (JSON) and decodes the answer into out: JSON, or the raw
// bytes into a *[]byte.
func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.URL, "/")+path, body)
	if err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("master target %s: %w", c.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("master target %s: %w", c.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		json.Unmarshal(b, &e)
		if e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		var kind error
		switch resp.StatusCode {
		case http.StatusNotFound:
			kind = targets.ErrNotFound
		case http.StatusConflict:
			kind = pipeline.ErrRecoveryState
		case http.StatusForbidden:
			kind = pipeline.ErrForbidden
		default:
			kind = pipeline.ErrPermanent
		}
		return fmt.Errorf("%w: master target %s: %s", kind, c.URL, e.Error)
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = b
		return nil
	}
	return json.Unmarshal(b, out)
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
