package dashboard

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
)

// Protection of the action forms against cross-site request forgery, in
// three layers, each enough against today's browsers:
//
//  1. [http.CrossOriginProtection] (in ServeHTTP): a POST whose
//     Sec-Fetch-Site says it comes from another site, or whose Origin
//     does not match the Host, is refused.
//  2. A token bound to a cookie and to a secret: each browser gets a
//     random cookie (HttpOnly, SameSite=Strict), and every form carries
//     HMAC-SHA256(secret, cookie) in a hidden field. A POST passes only
//     when its token is the HMAC of its own cookie. The secret is random
//     per process, so no one can make a token for a cookie they managed
//     to plant, and tokens end with the process (a page older than the
//     process is refused: load it again).
//  3. SameSite=Strict: a cross-site POST carries no cookie at all.
//
// Every check runs before the action reads anything else of the request.

const (
	csrfCookie = "inbox_dashboard_csrf"
	csrfField  = "csrf"
	// cookieBytes is the size of the random cookie value.
	cookieBytes = 32
)

// csrf holds the process's secret; it makes and checks the forms' tokens
// and signs the flash messages.
type csrf struct {
	secret []byte
}

func newCSRF() (*csrf, error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("generate CSRF secret: %w", err)
	}
	return &csrf{secret: secret}, nil
}

// mac returns the HMAC of value for purpose ("csrf", "flash"), so that a
// value signed for one purpose is worth nothing for another.
func (c *csrf) mac(purpose, value string) string {
	m := hmac.New(sha256.New, c.secret)
	m.Write([]byte(purpose))
	m.Write([]byte{0})
	m.Write([]byte(value))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// token returns the form token of the request's browser, giving the
// browser a cookie first when it has none (or a malformed one).
func (c *csrf) token(w http.ResponseWriter, r *http.Request) string {
	v := cookieValue(r, csrfCookie)
	if !validCookieValue(v) {
		b := make([]byte, cookieBytes)
		_, _ = rand.Read(b) // crypto/rand.Read does not fail (it crashes the program instead)
		v = base64.RawURLEncoding.EncodeToString(b)
		http.SetCookie(w, &http.Cookie{
			Name: csrfCookie, Value: v, Path: "/",
			HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
		})
	}
	return c.mac("csrf", v)
}

// check returns an error, to show, unless the request's form token is the
// one of its cookie.
func (c *csrf) check(r *http.Request) error {
	v := cookieValue(r, csrfCookie)
	if !validCookieValue(v) {
		return errors.New("Refused: the request carries no CSRF cookie. Load the page again (the browser must accept cookies) and retry.")
	}
	tok := r.PostForm.Get(csrfField)
	if tok == "" || !hmac.Equal([]byte(tok), []byte(c.mac("csrf", v))) {
		return errors.New("Refused: the form's CSRF token is missing or wrong (the page may be older than the dashboard's process). Load the page again and retry.")
	}
	return nil
}

// cookieValue returns the value of the request's cookie name, or "".
func cookieValue(r *http.Request, name string) string {
	ck, err := r.Cookie(name)
	if err != nil {
		return ""
	}
	return ck.Value
}

// validCookieValue reports whether v is a cookie value token made.
func validCookieValue(v string) bool {
	b, err := base64.RawURLEncoding.DecodeString(v)
	return err == nil && len(b) == cookieBytes
}
