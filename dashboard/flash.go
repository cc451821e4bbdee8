package dashboard

import (
	"crypto/hmac"
	"encoding/base64"
	"net/http"
	"strings"
)

// A flash is the message an action leaves for the page it redirects to:
// kept in a short-lived cookie signed with the process's secret, shown
// once, then cleared.

const (
	flashCookie = "inbox_dashboard_flash"
	// maxFlash bounds a flash message's length in bytes, under a cookie's
	// limit.
	maxFlash = 1000
	// flashAge is how long a flash waits for its page, in seconds.
	flashAge = 60
)

// flash is a message for the next page; Kind is "ok" or "warn".
type flash struct {
	Kind    string
	Message string
}

// setFlash leaves f for the next page the browser loads.
func (c *csrf) setFlash(w http.ResponseWriter, r *http.Request, f flash) {
	msg := f.Message
	if len(msg) > maxFlash {
		msg = strings.ToValidUTF8(msg[:maxFlash], "") + "…"
	}
	payload := f.Kind + "\n" + msg
	http.SetCookie(w, &http.Cookie{
		Name:  flashCookie,
		Value: base64.RawURLEncoding.EncodeToString([]byte(payload)) + "." + c.mac("flash", payload),
		Path:  "/", MaxAge: flashAge, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
}

// takeFlash returns the flash the request carries, if any and signed by
// this process, and clears it.
func (c *csrf) takeFlash(w http.ResponseWriter, r *http.Request) *flash {
	v := cookieValue(r, flashCookie)
	if v == "" {
		return nil
	}
	http.SetCookie(w, &http.Cookie{
		Name: flashCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
	enc, mac, ok := strings.Cut(v, ".")
	if !ok {
		return nil
	}
	b, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil || !hmac.Equal([]byte(mac), []byte(c.mac("flash", string(b)))) {
		return nil
	}
	kind, msg, _ := strings.Cut(string(b), "\n")
	if kind != "ok" && kind != "warn" {
		return nil
	}
	return &flash{Kind: kind, Message: msg}
}
