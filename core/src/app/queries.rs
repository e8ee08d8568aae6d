//! Reads. They never change the state, so any replica may answer them (linearizably after
//! a read-index round, or stale on request: that choice belongs to consensus).

use super::glob::Glob;
use super::limits::LIST_PAGE_SIZE;
use super::state::ChatState;
use super::validate;
use super::{AppError, Auth, MessageId, Query, QueryOutput};
use std::ops::Bound;

impl ChatState {
    /// Stateless checks on a query, the counterpart of [`ChatState::validate`].
    pub fn validate_query(query: &Query) -> Result<(), AppError> {
        validate::validate_query(query)
    }

    pub fn query(&self, query: &Query) -> Result<QueryOutput, AppError> {
        Self::validate_query(query)?;
        match query {
            Query::ListAccounts { pattern, page } => Ok(self.list_accounts(pattern, *page)),
            Query::Credentials { user } => self.credentials(user),
            Query::UnreadCount { auth } => {
                let account = self.authenticate(auth)?;
                Ok(QueryOutput::UnreadCount(account.inbox.unread_count()))
            }
            Query::MessagesAfter { auth, after, limit } => {
                self.messages_after(auth, *after, *limit)
            }
        }
    }

    /// One page of the names matching `pattern`, in name order, plus the total number of
    /// matches. Names before the pattern's literal prefix cannot match, so the scan seeks
    /// past them; the rest are scanned once to count the total.
    fn list_accounts(&self, pattern: &str, page: u32) -> QueryOutput {
        let glob = Glob::new(pattern);
        let prefix = glob.literal_prefix();
        // A u32 page times a small page size cannot overflow a u64.
        let first_index = u64::from(page) * LIST_PAGE_SIZE as u64;
        let mut names: Vec<String> = Vec::with_capacity(LIST_PAGE_SIZE);
        let mut total: u64 = 0;
        let candidates = self
            .users
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .map(|(name, _)| name)
            .take_while(|name| name.starts_with(prefix.as_str()));
        for name in candidates.filter(|name| glob.matches(name)) {
            if total >= first_index && names.len() < LIST_PAGE_SIZE {
                names.push(name.clone());
            }
            total += 1;
        }
        let has_more = first_index.saturating_add(names.len() as u64) < total;
        QueryOutput::Accounts {
            names,
            page,
            total,
            has_more,
        }
    }

    /// Not authenticated: this is what the shell reads to verify a password, before any
    /// token exists.
    fn credentials(&self, user: &str) -> Result<QueryOutput, AppError> {
        let account = self
            .users
            .get(user)
            .ok_or_else(|| AppError::UnknownUser(user.to_owned()))?;
        Ok(QueryOutput::Credentials {
            user: user.to_owned(),
            password_hash: account.password_hash.clone(),
            generation: account.generation,
            token_epoch: account.token_epoch,
            unread_count: account.inbox.unread_count(),
        })
    }

    /// Messages with an id above `after`, oldest first, read or not, without marking
    /// anything read: a listener resuming after failover passes the last id it saw.
    fn messages_after(
        &self,
        auth: &Auth,
        after: MessageId,
        limit: u32,
    ) -> Result<QueryOutput, AppError> {
        let account = self.authenticate(auth)?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let views = account
            .inbox
            .messages()
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|(id, message)| self.view(&auth.user, *id, message))
            .collect();
        Ok(QueryOutput::Messages(views))
    }
}
