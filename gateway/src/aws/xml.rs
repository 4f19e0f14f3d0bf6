//! EC2's XML answers: `<ActionResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">`,
//! members in camelCase, list items as `<item>`, and the error document
//! `<Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/></Response>`.
//! Values are escaped with quick-xml; names are ours (never a client's).

use std::fmt::Write as _;

use serde_json::Value;

/// EC2's XML namespace for API version 2016-11-15.
pub const EC2_XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// An XML document being written.
#[derive(Debug, Default)]
pub struct Xml {
    out: String,
}

impl Xml {
    /// `<{action}Response xmlns=…><requestId>…</requestId>`.
    pub fn response(action: &str, request_id: &str) -> Xml {
        let mut x = Xml::default();
        let _ = write!(
            x.out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{EC2_XMLNS}\">"
        );
        x.leaf("requestId", request_id);
        x
    }

    /// Closes the response opened by [`Xml::response`].
    pub fn finish(mut self, action: &str) -> String {
        let _ = write!(self.out, "</{action}Response>");
        self.out
    }

    /// `<name>`.
    pub fn open(&mut self, name: &str) {
        let _ = write!(self.out, "<{name}>");
    }

    /// `</name>`.
    pub fn close(&mut self, name: &str) {
        let _ = write!(self.out, "</{name}>");
    }

    /// `<name>text</name>`, the text escaped.
    pub fn leaf(&mut self, name: &str, text: &str) {
        let _ = write!(
            self.out,
            "<{name}>{}</{name}>",
            quick_xml::escape::escape(text)
        );
    }

    /// A JSON value (from the management API's answer) under `name`: objects become members
    /// (their kebab-case keys in camelCase, or as [`Xml::value_with`] renames them), arrays
    /// `<item>`s, scalars text.
    pub fn value(&mut self, name: &str, v: &Value) {
        self.value_with(name, v, &|k| camel(k))
    }

    /// [`Xml::value`] with a key renaming of the caller's.
    pub fn value_with(&mut self, name: &str, v: &Value, rename: &dyn Fn(&str) -> String) {
        match v {
            Value::Null => {}
            Value::Bool(b) => self.leaf(name, if *b { "true" } else { "false" }),
            Value::Number(n) => self.leaf(name, &n.to_string()),
            Value::String(s) => self.leaf(name, s),
            Value::Array(items) => {
                self.open(name);
                for i in items {
                    self.value_with("item", i, rename);
                }
                self.close(name);
            }
            Value::Object(m) => {
                self.open(name);
                for (k, v) in m {
                    self.value_with(&rename(k), v, rename);
                }
                self.close(name);
            }
        }
    }
}

/// `client-vpn-endpoint-id` → `clientVpnEndpointId`.
pub fn camel(kebab: &str) -> String {
    let mut out = String::with_capacity(kebab.len());
    let mut upper = false;
    for c in kebab.chars() {
        if c == '-' || c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// EC2's error document.
pub fn error_document(code: &str, message: &str, request_id: &str) -> String {
    let mut x = Xml::default();
    x.out
        .push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>");
    x.leaf("Code", code);
    x.leaf("Message", message);
    x.out.push_str("</Error></Errors>");
    x.leaf("RequestID", request_id);
    x.out.push_str("</Response>");
    x.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_shaped_as_ec2_answers() {
        let mut x = Xml::response("DescribeThings", "r-1");
        x.value(
            "thingSet",
            &serde_json::json!([{"client-vpn-endpoint-id": "e<1>&", "dns-servers": ["10.0.0.2"], "on": true, "n": 3}]),
        );
        let doc = x.finish("DescribeThings");
        assert!(doc.contains("<DescribeThingsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r-1</requestId>"), "{doc}");
        assert!(doc.contains("<thingSet><item><clientVpnEndpointId>e&lt;1&gt;&amp;</clientVpnEndpointId><dnsServers><item>10.0.0.2</item></dnsServers><n>3</n><on>true</on></item></thingSet>"), "{doc}");
        assert!(doc.ends_with("</DescribeThingsResponse>"));
        let e = error_document("InvalidParameterValue", "a < b", "r-2");
        assert!(
            e.contains("<Code>InvalidParameterValue</Code><Message>a &lt; b</Message>"),
            "{e}"
        );
    }
}
