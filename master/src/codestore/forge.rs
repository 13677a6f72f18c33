//! Scale-out code store: after each commit the instance's `main` is pushed to an external forge
//! (Gitea, GitLab, Gogs, or any git server) named by a URL template, and workers clone from there.
//!
//! git2 is built without TLS here, so the forge is reached over plain `http://` or `git://`; put
//! it on a private network or behind a TLS-terminating proxy on the forge's side.

use std::path::Path;

use berth_worker_api::{Secret, ValidName};
use git2::{Cred, PushOptions, RemoteCallbacks, Repository};

use super::MAIN_REF;

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("push to {url} failed: {source}")]
    Push {
        url: String,
        #[source]
        source: git2::Error,
    },
    #[error("forge {url} rejected {refname}: {status}")]
    Rejected {
        url: String,
        refname: String,
        status: String,
    },
}

/// Where and how to push.
#[derive(Debug, Clone)]
pub struct Forge {
    /// URL template holding `{user}` and `{id}`, e.g. `http://forge:3000/{user}/{id}.git`.
    pub template: String,
    /// Basic-auth user name sent with the token (forges accept a token as the password).
    pub username: String,
    pub token: Option<Secret>,
    /// What workers clone with instead, when given: a forge user and token that may only read
    /// (the push token then never leaves the master).
    pub read: Option<(String, Secret)>,
}

impl Forge {
    /// The user name and password workers clone with: the read-only pair when configured,
    /// else the push token.
    pub fn clone_credential(&self) -> (Option<String>, Option<Secret>) {
        match &self.read {
            Some((user, token)) => (Some(user.clone()), Some(token.clone())),
            None => (
                self.token.as_ref().map(|_| self.username.clone()),
                self.token.clone(),
            ),
        }
    }

    /// The instance's clone URL on the forge.
    pub fn url(&self, user: &ValidName, id: &ValidName) -> String {
        self.template
            .replace("{user}", user.as_str())
            .replace("{id}", id.as_str())
    }

    /// Pushes the repository's `main` to the forge (forced: the code store is the source of
    /// truth). Blocking.
    #[tracing::instrument(skip_all, fields(%user, %id), err)]
    pub fn push(
        &self,
        repo_path: &Path,
        user: &ValidName,
        id: &ValidName,
    ) -> Result<(), ForgeError> {
        let url = self.url(user, id);
        let err = |source| ForgeError::Push {
            url: url.clone(),
            source,
        };
        let repo = Repository::open_bare(repo_path).map_err(err)?;
        let mut remote = repo.remote_anonymous(&url).map_err(err)?;
        let mut rejected: Option<(String, String)> = None;
        {
            let mut callbacks = RemoteCallbacks::new();
            let mut tried = false;
            callbacks.credentials(|_url, _user, _allowed| {
                // Answer once; a second call means the forge refused the token.
                if tried {
                    return Err(git2::Error::from_str("forge refused the credentials"));
                }
                tried = true;
                match &self.token {
                    Some(token) => Cred::userpass_plaintext(&self.username, token.expose()),
                    None => Err(git2::Error::from_str(
                        "forge asks for credentials and no token is set",
                    )),
                }
            });
            callbacks.push_update_reference(|refname, status| {
                if let Some(status) = status {
                    rejected = Some((refname.to_owned(), status.to_owned()));
                }
                Ok(())
            });
            let mut opts = PushOptions::new();
            opts.remote_callbacks(callbacks);
            remote
                .push(&[format!("+{MAIN_REF}:{MAIN_REF}")], Some(&mut opts))
                .map_err(err)?;
        }
        match rejected {
            Some((refname, status)) => Err(ForgeError::Rejected {
                url,
                refname,
                status,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forge(read: Option<(String, Secret)>) -> Forge {
        Forge {
            template: "http://forge/{user}/{id}.git".into(),
            username: "pusher".into(),
            token: Some(Secret::new("push-token")),
            read,
        }
    }

    #[test]
    fn workers_clone_with_the_read_token_when_one_is_given() {
        let (user, token) =
            forge(Some(("reader".into(), Secret::new("read-token")))).clone_credential();
        assert_eq!(user.as_deref(), Some("reader"));
        assert_eq!(
            token.map(|t| t.expose().to_owned()).as_deref(),
            Some("read-token")
        );
        // Without one, the push token is what workers get (docs/OPERATIONS.md says why).
        let (user, token) = forge(None).clone_credential();
        assert_eq!(user.as_deref(), Some("pusher"));
        assert_eq!(
            token.map(|t| t.expose().to_owned()).as_deref(),
            Some("push-token")
        );
    }
}
